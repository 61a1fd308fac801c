"""The client SDK: HTTP or gRPC, sync or async, records in, typed results out.

    with CalibratedClassifierClient("localhost:8001", protocol="grpc") as client:
        for prediction in client.predict([{"dialogue": "buyer: hi", "order_amount": 12.5}]):
            print(prediction["abuse"].calibrated_score, prediction["reason"].label)

The client learns text fields, feature order, tasks and classes from the ensemble's
config on the server, splits large inputs into requests of at most the server's
``max_batch_size``, and raises precise errors for a server that is down, a model
that is not ready, a bad record and a rejected request.

``release=n`` addresses one release of the repository explicitly (the ensemble
``<model>-release-<n>``, which pins that release's step versions); by default the
ensemble answers with its current release. ``Prediction.release`` says which answered.

Every call has a deadline (``timeout_s``). A call is retried (``retries`` times, with
growing, jittered pauses) only when the server did not run it: no connection could
be made, or the server refused it because its queue was full or the request waited
too long in it. A timeout or a rejected input is never retried.
"""
from __future__ import annotations

import asyncio
import importlib
import random
import socket
import time
from typing import Any, Awaitable, Callable, Literal, Mapping, TypeVar

import numpy as np

from tce_backends.contract import DEFAULT_ENSEMBLE, QUEUE_REFUSALS, SCHEMA_PARAMETER, release_model_name
from tce_backends.errors import UsageError

from .concurrency import AdaptiveLimit, published_start
from .endpoints import host_port
from .errors import InferenceError, ModelNotReadyError, RequestTimeoutError, ServerBusyError, ServerUnavailableError
from .results import Prediction, predictions_from_outputs
from .schema import EnsembleSchema, Records

T = TypeVar("T")
_NOT_CONNECTED = ("Connection refused", "failed to connect", "Failed to connect")

Protocol = Literal["http", "grpc"]
DEFAULT_MODEL = DEFAULT_ENSEMBLE
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
_DATATYPES = {np.dtype(np.float64): "FP64", np.dtype(np.object_): "BYTES"}


def _protocol_module(protocol: str, asynchronous: bool) -> Any:
    if protocol not in ("http", "grpc"):
        raise UsageError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return importlib.import_module(f"tritonclient.{protocol}{'.aio' if asynchronous else ''}")


def _parse_config(protocol: str, config: Any, model: str) -> tuple[EnsembleSchema, int]:
    if protocol == "grpc":
        config = config["config"]
    try:
        published = config["parameters"][SCHEMA_PARAMETER]["string_value"]
    except KeyError:
        raise ModelNotReadyError(f"model {model!r} does not publish a '{SCHEMA_PARAMETER}' parameter; "
                                 "is it an ensemble built by 'tce build'?") from None
    try:
        schema = EnsembleSchema.from_json(published)
    except (KeyError, ValueError, TypeError) as error:  # a part missing: an older build
        raise ModelNotReadyError(f"model {model!r} publishes a '{SCHEMA_PARAMETER}' this client cannot read "
                                 f"({error!r}); rebuild the repository with this version's 'tce build'") from None
    return schema, int(config.get("max_batch_size", 0)) or 1


def batch_slices(rows: int, size: int) -> list[slice]:
    """Row ranges of at most ``size`` rows: one request each."""
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def _is_empty(records: Records) -> bool:
    return not isinstance(records, Mapping) and hasattr(records, "__len__") and len(records) == 0


def _not_run(error: BaseException) -> bool:
    """True when the server certainly did not run the request, so a retry is safe."""
    message = str(error)
    return isinstance(error, ConnectionRefusedError) or any(m in message for m in (*QUEUE_REFUSALS, *_NOT_CONNECTED))


def _is_timeout(error: BaseException) -> bool:
    message = str(error)
    return isinstance(error, (TimeoutError, asyncio.TimeoutError, socket.timeout)) or \
        "DEADLINE_EXCEEDED" in message or "Deadline Exceeded" in message or "timed out" in message


class _Common:
    def __init__(self, url: str | None, protocol: Protocol, model: str, asynchronous: bool, timeout_s: float,
                 retries: int, release: int | None = None) -> None:
        self._module = _protocol_module(protocol, asynchronous)
        if timeout_s <= 0:
            raise UsageError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise UsageError(f"retries must be >= 0, got {retries}")
        if release is not None and (isinstance(release, bool) or not isinstance(release, int) or release < 1):
            raise UsageError(f"release must be a release number >= 1, got {release!r}")
        self.protocol = protocol
        self.url = host_port(url or DEFAULT_URLS[protocol], protocol)
        self.ensemble = model
        self.release = release
        self.model = model if release is None else release_model_name(model, release)
        self.timeout_s = timeout_s
        self.retries = retries
        self.schema: EnsembleSchema | None = None
        self.max_batch_size = 1

    def _pause(self, attempt: int) -> float:
        return min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random())

    def _retry(self, call: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - classified below
                if attempt == self.retries or not _not_run(error):
                    raise
                time.sleep(self._pause(attempt))
        raise AssertionError("unreachable")

    async def _retry_async(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return await asyncio.wait_for(call(), self.timeout_s)
            except Exception as error:  # noqa: BLE001 - classified below
                if attempt == self.retries or not _not_run(error):
                    raise
                await asyncio.sleep(self._pause(attempt))
        raise AssertionError("unreachable")

    def _request(self, inputs: dict[str, np.ndarray], rows: slice) -> tuple[list[Any], list[Any]]:
        infer_inputs = []
        for name, array in inputs.items():
            part = np.ascontiguousarray(array[rows])
            tensor = self._module.InferInput(name, list(part.shape), _DATATYPES[part.dtype])
            if self.protocol == "http":
                tensor.set_data_from_numpy(part, binary_data=True)
            else:
                tensor.set_data_from_numpy(part)
            infer_inputs.append(tensor)
        assert self.schema is not None
        outputs = [self._output(name) for name in self.schema.output_names]
        return infer_inputs, outputs

    def _output(self, name: str) -> Any:
        if self.protocol == "http":
            return self._module.InferRequestedOutput(name, binary_data=True)
        return self._module.InferRequestedOutput(name)

    def _encode(self, records: Records, allow_missing_fields: bool) -> dict[str, np.ndarray]:
        assert self.schema is not None
        return self.schema.encode(records, allow_missing_fields=allow_missing_fields)

    def _unavailable(self, error: BaseException) -> ServerUnavailableError:
        """Say whether nothing listens at the address, or something that does not speak
        this protocol (typically the other protocol's port)."""
        host, _, port = self.url.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(self.timeout_s, 3.0)):
                listening = True
        except OSError:
            listening = False
        if not listening:
            return ServerUnavailableError(f"no server listens at {self.url}; start one with 'make serve' or "
                                          "'tce serve', or check the host and port")
        other = "grpc" if self.protocol == "http" else "http"
        return ServerUnavailableError(f"the server at {self.url} does not answer {self.protocol.upper()} requests; "
                                      f"is it the {other.upper()} port? Use the {self.protocol.upper()} port "
                                      f"(default {DEFAULT_URLS[self.protocol]}), or the {other.upper()} protocol "
                                      f"(--protocol {other} on the command line, protocol='{other}' in the SDK)")

    def _raise_for(self, error: BaseException) -> Exception:
        """The SDK's error for a failed inference call."""
        from tritonclient.utils import InferenceServerException

        if _is_timeout(error):
            return RequestTimeoutError(f"no answer from {self.url} within {self.timeout_s:g} s")
        if isinstance(error, InferenceServerException):
            message = error.message() or str(error)
            if any(m in message for m in QUEUE_REFUSALS):
                return ServerBusyError(f"the server is overloaded and refused the request ({message}); "
                                       f"retried {self.retries} time(s)")
            if any(m in message for m in _NOT_CONNECTED):
                return self._unavailable(error)
            return InferenceError(message)
        if isinstance(error, (ConnectionError, OSError)):
            return self._unavailable(error)
        return InferenceError(f"{type(error).__name__}: {error}")


class CalibratedClassifierClient(_Common):
    """Synchronous client over ``tritonclient.http`` or ``tritonclient.grpc``."""

    def __init__(self, url: str | None = None, protocol: Protocol = "http", model: str = DEFAULT_MODEL,
                 timeout_s: float = 30.0, retries: int = 2, release: int | None = None) -> None:
        super().__init__(url, protocol, model, asynchronous=False, timeout_s=timeout_s, retries=retries,
                         release=release)
        if protocol == "http":
            self._client = self._module.InferenceServerClient(self.url, connection_timeout=timeout_s,
                                                              network_timeout=timeout_s)
            self._deadline: dict[str, float] = {}
        else:
            self._client = self._module.InferenceServerClient(self.url)
            self._deadline = {"client_timeout": timeout_s}
        self._connect()

    def _connect(self) -> None:
        try:
            live = self._retry(lambda: self._client.is_server_live(**self._deadline))
        except Exception as error:  # noqa: BLE001 - connection errors differ per protocol
            raise self._unavailable(error) from None
        if not live:
            raise ServerUnavailableError(f"the server at {self.url} is not live")
        try:
            ready = self._client.is_model_ready(self.model, **self._deadline)
        except Exception as error:  # noqa: BLE001
            raise ModelNotReadyError(f"cannot query model {self.model!r}: {error}") from None
        if not ready:
            hint = (f"release {self.release} is not loaded there ('tce release list' shows the loaded ones)"
                    if self.release is not None else "check the server log for its load error")
            raise ModelNotReadyError(f"model {self.model!r} is not ready on {self.url}; {hint}")
        config = (self._client.get_model_config(self.model, as_json=True, **self._deadline)
                  if self.protocol == "grpc" else self._client.get_model_config(self.model))
        self.schema, self.max_batch_size = _parse_config(self.protocol, config, self.model)

    def predict(self, records: Records, allow_missing_fields: bool = False) -> list[Prediction]:
        """One prediction per record (none for no records). A field absent from every
        record is an error (``RecordError``) unless ``allow_missing_fields``."""
        if _is_empty(records):
            return []
        inputs = self._encode(records, allow_missing_fields)
        rows = next(iter(inputs.values())).shape[0]
        predictions: list[Prediction] = []
        for part in batch_slices(rows, self.max_batch_size):
            predictions += self.infer_arrays(inputs, part)
        return predictions

    def infer_arrays(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)) -> list[Prediction]:
        """Send already-encoded input arrays (``schema.encode``) as one request."""
        infer_inputs, outputs = self._request(inputs, rows)
        try:
            result = self._retry(lambda: self._client.infer(self.model, infer_inputs, outputs=outputs,
                                                            **self._deadline))
        except Exception as error:  # noqa: BLE001
            raise self._raise_for(error) from None
        assert self.schema is not None
        return predictions_from_outputs(self.schema, {name: result.as_numpy(name) for name in self.schema.output_names})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "CalibratedClassifierClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCalibratedClassifierClient(_Common):
    """asyncio client over ``tritonclient.http.aio`` or ``tritonclient.grpc.aio``;
    ``predict`` sends a large input's requests concurrently, as many at a time as the
    server takes (``tce_client.concurrency``; at most ``max_concurrency``). A request
    refused for load is sent again when there is room; only ``stall_s`` without any answer
    ends a call with ``ServerBusyError``."""

    def __init__(self, url: str | None = None, protocol: Protocol = "http", model: str = DEFAULT_MODEL,
                 max_concurrency: int = 8, timeout_s: float = 30.0, retries: int = 2, stall_s: float = 300.0,
                 on_concurrency_change: Callable[[int, int], None] | None = None, release: int | None = None) -> None:
        super().__init__(url, protocol, model, asynchronous=True, timeout_s=timeout_s, retries=retries,
                         release=release)
        if max_concurrency < 1:
            raise UsageError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if stall_s <= 0:
            raise UsageError(f"stall_s must be > 0, got {stall_s}")
        self.max_concurrency = max_concurrency
        self.stall_s = stall_s
        self.limit: AdaptiveLimit | None = None
        self._on_concurrency_change = on_concurrency_change
        self._client = (self._module.InferenceServerClient(self.url, conn_timeout=timeout_s) if protocol == "http"
                        else self._module.InferenceServerClient(self.url))

    async def connect(self) -> "AsyncCalibratedClassifierClient":
        try:
            live = await self._retry_async(self._client.is_server_live)
        except Exception as error:  # noqa: BLE001
            raise self._unavailable(error) from None
        if not live:
            raise ServerUnavailableError(f"the server at {self.url} is not live")
        try:
            ready = await asyncio.wait_for(self._client.is_model_ready(self.model), self.timeout_s)
        except Exception as error:  # noqa: BLE001
            raise ModelNotReadyError(f"cannot query model {self.model!r}: {error}") from None
        if not ready:
            raise ModelNotReadyError(f"model {self.model!r} is not ready on {self.url}")
        config = await asyncio.wait_for(self._client.get_model_config(self.model, as_json=True)
                                        if self.protocol == "grpc" else self._client.get_model_config(self.model),
                                        self.timeout_s)
        self.schema, self.max_batch_size = _parse_config(self.protocol, config, self.model)
        start, ceiling = await self._published_start(config)
        self.limit = AdaptiveLimit(start, ceiling, self._on_concurrency_change)
        return self

    async def _published_start(self, config: Any) -> tuple[int, int]:
        """Where the adaptive limit starts, from the steps' published configs."""
        try:
            ensemble = config["config"] if self.protocol == "grpc" else config
            steps = []
            for step in ensemble.get("ensemble_scheduling", {}).get("step", []):
                step_config = await asyncio.wait_for(
                    self._client.get_model_config(step["model_name"], as_json=True) if self.protocol == "grpc"
                    else self._client.get_model_config(step["model_name"]), self.timeout_s)
                steps.append(step_config["config"] if self.protocol == "grpc" else step_config)
            return published_start(steps, self.max_concurrency)
        except Exception:  # noqa: BLE001 - a server that publishes less: start small and adapt
            return min(2, self.max_concurrency), self.max_concurrency

    async def predict(self, records: Records, allow_missing_fields: bool = False) -> list[Prediction]:
        if _is_empty(records):
            return []
        if self.schema is None:
            await self.connect()
        inputs = self._encode(records, allow_missing_fields)
        rows = next(iter(inputs.values())).shape[0]
        assert self.schema is not None
        schema = self.schema

        async def one(part: slice) -> list[Prediction]:
            return predictions_from_outputs(schema, await self.infer_outputs_adaptive(inputs, part))

        parts = await asyncio.gather(*(one(part) for part in batch_slices(rows, self.max_batch_size)))
        return [prediction for part in parts for prediction in part]

    async def infer_outputs_adaptive(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)
                                     ) -> dict[str, np.ndarray]:
        """``infer_outputs`` within the adaptive limit: a request the server refuses for load
        waits for room and goes again; ``ServerBusyError`` only after ``stall_s`` without an
        answer."""
        assert self.limit is not None, "connect() first"
        deadline = time.monotonic() + self.stall_s
        attempt = 0
        while True:
            async with self.limit:
                try:
                    outputs = await self.infer_outputs(inputs, rows)
                except ServerBusyError:
                    self.limit.refused()
                    if time.monotonic() > deadline:
                        raise
                else:
                    self.limit.answered()
                    return outputs
            attempt += 1
            await asyncio.sleep(self._pause(min(attempt, 4)))

    async def infer_arrays(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)) -> list[Prediction]:
        assert self.schema is not None
        return predictions_from_outputs(self.schema, await self.infer_outputs(inputs, rows))

    async def infer_outputs(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """One request; the ensemble's output tensors by name (for columnar callers:
        ``tce_client.results.output_columns``)."""
        infer_inputs, outputs = self._request(inputs, rows)
        try:
            result = await self._retry_async(lambda: self._client.infer(self.model, infer_inputs, outputs=outputs))
        except Exception as error:  # noqa: BLE001
            raise self._raise_for(error) from None
        assert self.schema is not None
        return {name: result.as_numpy(name) for name in self.schema.output_names}

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncCalibratedClassifierClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
