"""The door's HTTP side (behind nginx): KServe v2 inference, read-only discovery, the
administrative API behind the admin key, and SageMaker's /ping and /invocations.

Every request Triton receives is built here: a fixed path made of checked names, the
headers this module sets, and a body re-encoded from what was checked."""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from typing import Awaitable, Callable

from aiohttp import web

from tce_gateway import http_codec, invocations, v1
from tce_gateway.config import DoorConfig
from tce_gateway.errors import Refusal
from tce_gateway.prediction_log import ID_HEADER, PredictionLog, caller_id
from tce_gateway.routing import Router
from tce_gateway.signatures import NAME_PATTERN, VERSION_PATTERN, ModelSignature, SignatureCache
from tce_gateway.tensors import InferRequest
from tce_gateway.upstream import HttpAnswer, Triton, Unreachable

ADMIN_KEY_HEADER = "tce-admin-key"
_VERSIONED = rf"/models/({NAME_PATTERN})(?:/versions/({VERSION_PATTERN}))?"
# Matched whole (fullmatch): a path the door forwards holds nothing but these characters.
INFER = re.compile(rf"/v2{_VERSIONED}/infer")
V1_PREDICT = re.compile(rf"/v1/models/({NAME_PATTERN}):predict")
DISCOVERY = re.compile(rf"/v2(?:/health/(?:live|ready)|/models/stats|{_VERSIONED}(?:/config|/ready|/stats)?)?")
VERSIONED_DISCOVERY = re.compile(rf"/v2/models/({NAME_PATTERN})/versions/({VERSION_PATTERN})(/config|/ready|/stats)?")
ADMIN = re.compile(rf"/v2/(?:repository/index|repository/models/{NAME_PATTERN}/(?:load|unload)"
                   r"|(?:system|cuda)sharedmemory(?:/region/[A-Za-z0-9_.-]{1,128})?/(?:status|register|unregister)"
                   rf"|logging|trace/setting|models/{NAME_PATTERN}/trace/setting)")
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"
_HEADER_SIZE = re.compile(r";\s*json-header-size=([^;]*)")
_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def refusal_response(refusal: Refusal) -> web.Response:
    return web.json_response({"error": refusal.text}, status=refusal.status)


def decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding, never more than ``limit`` bytes of it."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    wbits = _DECOMPRESSORS.get(name)
    if wbits is None:
        raise Refusal(f"Content-Encoding {name!r} is not accepted (accepted: gzip, deflate, identity)", 415)
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise Refusal(f"the body is not valid {name} data: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise Refusal(f"the body decompresses to more than {limit} bytes", 413)
    if not inflater.eof or inflater.unused_data:
        raise Refusal(f"the body is not one complete {name} stream (cut short, or followed by more data)")
    return data


class HttpDoor:
    def __init__(self, config: DoorConfig, triton: Triton, signatures: SignatureCache,
                 router: Router | None = None, predictions: PredictionLog | None = None) -> None:
        self._config = config
        self._triton = triton
        self._signatures = signatures
        self._router = router or Router(signatures, None, None)
        self._predictions = predictions

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._config.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        try:
            return await self._route(request)
        except Refusal as refusal:
            return refusal_response(refusal)
        except Unreachable as unreachable:
            return refusal_response(Refusal(f"no Triton server could be reached ({unreachable}): Connection "
                                            "refused", 503))
        except web.HTTPRequestEntityTooLarge:
            return refusal_response(Refusal(f"the body is larger than {self._config.limits.max_body_bytes} bytes",
                                            413))
        except TimeoutError:
            return refusal_response(Refusal("Triton did not answer in time", 504))

    async def _route(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/invocations" or path == "/ping":
            return await self._sagemaker(request, path)
        match = INFER.fullmatch(path)
        if match:
            self._method(request, "POST")
            header_length = request.headers.get(http_codec.HEADER_LENGTH)
            return await self._infer(request, match.group(1), match.group(2) or "", header_length)
        match = V1_PREDICT.fullmatch(path)
        if match:
            self._method(request, "POST")
            return await self._v1_predict(request, match.group(1))
        if DISCOVERY.fullmatch(path):
            self._method(request, "GET")
            return _response(await self._triton.http("GET", await self._discovery_path(path)))
        if ADMIN.fullmatch(path):
            return await self._admin(request, path)
        raise Refusal(f"{request.method} {_printable(path)} is not served by the gateway", 404)

    @staticmethod
    def _method(request: web.Request, allowed: str) -> None:
        if request.method != allowed:
            raise Refusal(f"{_printable(request.path)} takes {allowed}, not {_printable(request.method)}", 405)

    async def _body(self, request: web.Request) -> bytes:
        raw = await request.read()
        return decompressed(raw, request.headers.get("Content-Encoding"), self._config.limits.max_body_bytes)

    async def _discovery_path(self, path: str) -> str:
        """A release's own model for a versioned path of an ensemble with releases (``routing``)."""
        match = VERSIONED_DISCOVERY.fullmatch(path)
        if match:
            target = await self._router.release_model(match.group(1), match.group(2))
            if target is not None:
                return f"/v2/models/{target}{match.group(3) or ''}"
        return path

    def _caller_id(self, request: web.Request) -> str | None:
        """The caller's X-Request-Id, checked, when answers are logged (else not read)."""
        if self._predictions is None:
            return None
        try:
            return caller_id(request.headers.get(ID_HEADER), self._config.limits.max_id_chars)
        except ValueError as error:
            raise Refusal(str(error)) from None

    def _logged(self, request: InferRequest, signature: ModelSignature, answer: HttpAnswer, given: str | None,
                response: web.Response) -> web.Response:
        """``response``, after the prediction log was offered the answer (it says the id it logged)."""
        if self._predictions is not None:
            logged = self._predictions.offer(request, signature, answer, given)
            if logged is not None:
                response.headers[ID_HEADER] = logged
        return response

    async def _infer(self, request: web.Request, model: str, version: str, header_length: str | None
                     ) -> web.Response:
        given = self._caller_id(request)
        route = await self._router.route(model, version)
        body = await self._body(request)
        signature = await self._signatures.get(route.model, route.version)
        checked = http_codec.parse_infer(route.model, route.version, body, header_length, signature,
                                         self._config.limits)
        payload, headers = http_codec.encode_infer(checked)
        answer = await self._triton.http("POST", route.infer_path(), payload, headers)
        self._router.answered(route, checked, signature, answer)
        return self._logged(checked, signature, answer, given, _response(answer))

    async def _v1_predict(self, request: web.Request, model: str) -> web.Response:
        """Records in, named results out (``tce_gateway.v1``)."""
        given = self._caller_id(request)
        route = await self._router.route(model)
        body = await self._body(request)
        signature = await self._signatures.get(route.model)
        checked, schema = v1.parse_predict(body, signature, self._config.limits)
        payload, headers = http_codec.encode_infer(_with_id(checked, given))
        answer = await self._triton.http("POST", route.infer_path(), payload, headers)
        self._router.answered(route, checked, signature, answer)
        return self._logged(checked, signature, answer, given,
                            web.json_response(v1.answer(answer.status, answer.headers, answer.body, schema)))

    async def _sagemaker(self, request: web.Request, path: str) -> web.Response:
        model = self._config.default_model
        if path == "/ping":
            self._method(request, "GET")
            answer = await self._triton.http("GET", f"/v2/models/{model}/ready", timeout_s=5)
            return web.Response(status=200 if answer.status == 200 else 503)
        self._method(request, "POST")
        content_type = request.headers.get("Content-Type", "application/json")
        if content_type.startswith(SAGEMAKER_BINARY):
            size = _HEADER_SIZE.search(content_type)
            return _sagemaker_v2(await self._infer(request, model, "", size.group(1).strip() if size else ""))
        given = self._caller_id(request)
        route = await self._router.route(model)
        body = await self._body(request)
        signature = await self._signatures.get(route.model)
        invocation = invocations.read_invocation(body, content_type, request.headers.get("Accept"), signature,
                                                 self._config.limits)
        payload, headers = http_codec.encode_infer(_with_id(invocation.request, given))
        answer = await self._triton.http("POST", route.infer_path(), payload, headers)
        self._router.answered(route, invocation.request, signature, answer)
        if invocation.schema is None:
            response = _sagemaker_v2(_response(answer))
        else:
            response = web.Response(body=invocations.seed_answer(answer.status, answer.headers, answer.body,
                                                                 invocation.schema, invocation.response_type),
                                    content_type=invocation.response_type)
        return self._logged(invocation.request, signature, answer, given, response)

    async def _admin(self, request: web.Request, path: str) -> web.Response:
        key = request.headers.get(ADMIN_KEY_HEADER, "")
        if not self._config.admits(key):
            raise Refusal(f"administrative endpoint {path} needs a valid {ADMIN_KEY_HEADER} header", 403)
        if request.method not in ("GET", "POST"):
            raise Refusal(f"{path} takes GET or POST", 405)
        body = await self._body(request)
        payload = None
        if body.strip():
            document = http_codec.strict_json(body, "the body")
            if not isinstance(document, dict):
                raise Refusal("the body of an administrative call must be a JSON object")
            payload = json.dumps(document, separators=(",", ":")).encode()
        headers = {ADMIN_KEY_HEADER: self._config.forwarded_key(key), "Content-Type": "application/json"}
        answer = await self._triton.http_all(request.method, path, payload, headers)
        self._signatures.clear()  # a model may have been loaded, unloaded or changed
        return _response(answer)


def _with_id(request: InferRequest, given: str | None) -> InferRequest:
    """A request the door built from records, carrying the caller's X-Request-Id to Triton (its
    traces then name the request as the prediction log does)."""
    return dataclasses.replace(request, id=given) if given and not request.id else request


def _sagemaker_v2(response: web.Response) -> web.Response:
    length = response.headers.pop(http_codec.HEADER_LENGTH, None)
    if length is not None:  # SageMaker's way of saying where the JSON header ends
        response.headers["Content-Type"] = f"application/vnd.sagemaker-triton.binary+json;json-header-size={length}"
    return response


def _response(answer: HttpAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def _printable(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= 80 else cleaned[:77] + "..."

