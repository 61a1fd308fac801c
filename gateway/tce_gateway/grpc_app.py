"""The door's gRPC side (behind nginx): ``inference.GRPCInferenceService`` with every
request decoded, checked and re-encoded before it goes to Triton.

Inference goes through ``grpc_codec`` and on to Triton's HTTP frontend as binary tensors
(its answer is turned into the ``ModelInferResponse`` Triton's gRPC frontend gives);
discovery calls are rebuilt from their checked name and version; administrative calls
need the admin key and go to every replica; streaming inference is not served."""
from __future__ import annotations

import dataclasses
from typing import Any, Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2

from tce_gateway import grpc_codec, http_codec
from tce_gateway.config import DoorConfig
from tce_gateway.errors import Refusal
from tce_gateway.prediction_log import ID_METADATA, PredictionLog, caller_id
from tce_gateway.routing import Router
from tce_gateway.signatures import MODEL_NAME, VERSION, SignatureCache, _short
from tce_gateway.upstream import SERVICE, Triton, Unreachable

ADMIN_KEY_METADATA = "triton-grpc-protocol-tce-admin-key"
DISCOVERY = {"ServerLive": "ServerLiveRequest", "ServerReady": "ServerReadyRequest",
             "ServerMetadata": "ServerMetadataRequest", "ModelReady": "ModelReadyRequest",
             "ModelMetadata": "ModelMetadataRequest", "ModelConfig": "ModelConfigRequest",
             "ModelStatistics": "ModelStatisticsRequest"}
ADMIN = {"RepositoryIndex": "RepositoryIndexRequest", "RepositoryModelLoad": "RepositoryModelLoadRequest",
         "RepositoryModelUnload": "RepositoryModelUnloadRequest",
         "SystemSharedMemoryStatus": "SystemSharedMemoryStatusRequest",
         "SystemSharedMemoryRegister": "SystemSharedMemoryRegisterRequest",
         "SystemSharedMemoryUnregister": "SystemSharedMemoryUnregisterRequest",
         "CudaSharedMemoryStatus": "CudaSharedMemoryStatusRequest",
         "CudaSharedMemoryRegister": "CudaSharedMemoryRegisterRequest",
         "CudaSharedMemoryUnregister": "CudaSharedMemoryUnregisterRequest",
         "TraceSetting": "TraceSettingRequest", "LogSettings": "LogSettingsRequest"}
Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class GrpcDoor:
    def __init__(self, config: DoorConfig, triton: Triton, signatures: SignatureCache,
                 router: Router | None = None, predictions: PredictionLog | None = None) -> None:
        self._config = config
        self._triton = triton
        self._signatures = signatures
        self._router = router or Router(signatures, None, None)
        self._predictions = predictions

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Any] = {"ModelInfer": grpc.unary_unary_rpc_method_handler(self._guarded(self._infer)),
                                   "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self._stream)}
        for name, request_type in DISCOVERY.items():
            methods[name] = grpc.unary_unary_rpc_method_handler(self._guarded(self._discovery(name, request_type)))
        for name, request_type in ADMIN.items():
            methods[name] = grpc.unary_unary_rpc_method_handler(self._guarded(self._admin(name, request_type)))
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        limit = self._config.limits.timeout_s
        return limit if remaining is None else max(0.001, min(limit, remaining))

    def _guarded(self, call: Unary) -> Unary:
        """Refusals and Triton's own errors become the caller's status; nothing else leaks."""
        async def run(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await call(payload, context)
            except Refusal as refusal:
                await context.abort(getattr(grpc.StatusCode, refusal.grpc_code), refusal.text)
            except grpc.aio.AioRpcError as error:
                await context.abort(error.code(), error.details() or "")
            except grpc_codec.TritonError as error:
                await context.abort(getattr(grpc.StatusCode, error.code), error.message)
            except Unreachable as unreachable:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"refused by the gateway: no Triton server could be "
                                                                 f"reached ({unreachable}): Connection refused")
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Triton did not answer in time")
            raise AssertionError("unreachable")
        return run

    def _caller_id(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's x-request-id metadata, checked, when answers are logged (else not read)."""
        if self._predictions is None:
            return None
        value = dict(context.invocation_metadata() or ()).get(ID_METADATA)
        try:
            return caller_id(value if isinstance(value, str) or value is None else "\x00",
                             self._config.limits.max_id_chars, f"{ID_METADATA} metadata entry")
        except ValueError as error:
            raise Refusal(str(error)) from None

    async def _infer(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = grpc_codec.decode_infer(payload)
        given = self._caller_id(context)
        route = await self._router.route(message.model_name, message.model_version)
        signature = await self._signatures.get(route.model, route.version)
        checked = grpc_codec.parse_infer(message, signature, self._config.limits)
        # Forwarded as a binary-tensor HTTP request and answered as the gRPC frontend would:
        # a Python gRPC client call costs about twice the door's own work.
        as_binary = dataclasses.replace(checked, model=route.model, version=route.version, binary_output=True,
                                        outputs=tuple(dataclasses.replace(output, binary=True)
                                                      for output in checked.outputs))
        body, headers = http_codec.encode_infer(as_binary)
        answer = await self._triton.http("POST", route.infer_path(), body, headers, timeout_s=self._timeout(context))
        self._router.answered(route, as_binary, signature, answer)
        response = grpc_codec.response_from_http(answer.status, answer.headers, answer.body)
        if self._predictions is not None:
            logged = self._predictions.offer(as_binary, signature, answer, given)
            if logged is not None and not as_binary.id:  # the caller's own id comes back in the response
                context.set_trailing_metadata(((ID_METADATA, logged),))
        return response

    async def _stream(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "refused by the gateway: streaming inference is not served; use ModelInfer")

    def _discovery(self, method: str, request_type: str) -> Unary:
        message_class = getattr(service_pb2, request_type)

        async def call(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
            message = _decode(message_class, payload)
            fresh = message_class()
            if "name" in message_class.DESCRIPTOR.fields_by_name:
                if message.name and not MODEL_NAME.fullmatch(message.name) or \
                        not message.name and method != "ModelStatistics":
                    raise Refusal(f"unknown model {_short(message.name)}", 404)
                if message.version and not VERSION.fullmatch(message.version):
                    raise Refusal(f"model '{message.name}': version must be a positive integer", 404)
                fresh.name, fresh.version = message.name, message.version
                release = await self._router.release_model(message.name, message.version) if message.name else None
                if release is not None:  # a release by version: its own model (tce_gateway.routing)
                    fresh.name, fresh.version = release, ""
            return await self._triton.grpc(method, fresh.SerializeToString(), self._timeout(context))
        return call

    def _admin(self, method: str, request_type: str) -> Unary:
        message_class = getattr(service_pb2, request_type)

        async def call(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
            key = dict(context.invocation_metadata() or ()).get(ADMIN_KEY_METADATA, "")
            if not isinstance(key, str) or not self._config.admits(key):
                raise Refusal(f"{method} is an administrative call: it needs a valid {ADMIN_KEY_METADATA} "
                              "metadata entry", 403)
            message = _decode(message_class, payload)
            message.DiscardUnknownFields()
            answer = await self._triton.grpc_all(method, message.SerializeToString(), self._timeout(context),
                                                 ((ADMIN_KEY_METADATA, self._config.forwarded_key(key)),))
            self._signatures.clear()  # a model may have been loaded, unloaded or changed
            return answer
        return call


def _decode(message_class: Any, payload: bytes) -> Any:
    try:
        return message_class.FromString(payload)
    except Exception as error:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeError by implementation
        raise Refusal(f"the message is not a valid {message_class.__name__}: {error}") from None
