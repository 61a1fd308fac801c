"""The client SDK: HTTP or gRPC, sync or async, records in, typed results out.

    with CalibratedClassifierClient("localhost:8001", protocol="grpc") as client:
        for prediction in client.predict([{"dialogue": "buyer: hi", "order_amount": 12.5}]):
            print(prediction["abuse"].calibrated_score, prediction["reason"].label)

The client learns text fields, feature order, tasks and classes from the ensemble's
config on the server, splits large inputs into requests of at most the server's
``max_batch_size``, and raises precise errors for a server that is down, a model
that is not ready, a bad record and a rejected request.
"""
from __future__ import annotations

import asyncio
import importlib
from typing import Any, Literal

import numpy as np

from .errors import InferenceError, ModelNotReadyError, ServerUnavailableError
from .results import Prediction, TaskResult
from .schema import SCHEMA_PARAMETER, EnsembleSchema, Records

Protocol = Literal["http", "grpc"]
DEFAULT_MODEL = "calibrated_ensemble"
DEFAULT_URLS = {"http": "localhost:8000", "grpc": "localhost:8001"}
CALIBRATION_VERSION = "calibration_version"
CALIBRATION_FALLBACK = "calibration_fallback"
_DATATYPES = {np.dtype(np.float64): "FP64", np.dtype(np.object_): "BYTES"}


def _protocol_module(protocol: str, asynchronous: bool) -> Any:
    if protocol not in ("http", "grpc"):
        raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    return importlib.import_module(f"tritonclient.{protocol}{'.aio' if asynchronous else ''}")


def _output_names(schema: EnsembleSchema) -> list[str]:
    names = []
    for task in schema.tasks:
        names += [f"{task.name}_raw", f"{task.name}_calibrated", f"{task.name}_label"]
    return [*names, CALIBRATION_VERSION, CALIBRATION_FALLBACK]


def _parse_config(protocol: str, config: Any, model: str) -> tuple[EnsembleSchema, int]:
    if protocol == "grpc":
        config = config["config"]
    try:
        schema = EnsembleSchema.from_json(config["parameters"][SCHEMA_PARAMETER]["string_value"])
    except KeyError:
        raise ModelNotReadyError(f"model {model!r} does not publish a '{SCHEMA_PARAMETER}' parameter; "
                                 "is it an ensemble built by 'tce build'?") from None
    return schema, int(config.get("max_batch_size", 0)) or 1


def _decode(schema: EnsembleSchema, outputs: dict[str, np.ndarray]) -> list[Prediction]:
    versions = outputs[CALIBRATION_VERSION].reshape(-1)
    fallback = outputs[CALIBRATION_FALLBACK]
    predictions = []
    for row in range(versions.shape[0]):
        tasks = {}
        for index, task in enumerate(schema.tasks):
            label = outputs[f"{task.name}_label"][row, 0]
            tasks[task.name] = TaskResult(
                task=task.name, classes=task.classes, raw=outputs[f"{task.name}_raw"][row],
                calibrated=outputs[f"{task.name}_calibrated"][row],
                label=label.decode() if isinstance(label, bytes) else str(label),
                calibration_fallback=bool(fallback[row, index]))
        version = versions[row]
        predictions.append(Prediction(tasks, version.decode() if isinstance(version, bytes) else str(version)))
    return predictions


def _slices(rows: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


class _Common:
    def __init__(self, url: str | None, protocol: Protocol, model: str, asynchronous: bool) -> None:
        self.protocol = protocol
        self.url = url or DEFAULT_URLS.get(protocol, "")
        self.model = model
        self._module = _protocol_module(protocol, asynchronous)
        self.schema: EnsembleSchema | None = None
        self.max_batch_size = 1

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
        outputs = [self._output(name) for name in _output_names(self.schema)]
        return infer_inputs, outputs

    def _output(self, name: str) -> Any:
        if self.protocol == "http":
            return self._module.InferRequestedOutput(name, binary_data=True)
        return self._module.InferRequestedOutput(name)

    def _encode(self, records: Records) -> dict[str, np.ndarray]:
        assert self.schema is not None
        return self.schema.encode(records)

    def _unavailable(self, error: BaseException) -> ServerUnavailableError:
        return ServerUnavailableError(f"no Triton server answers at {self.protocol}://{self.url} ({error}); "
                                      "start one with 'make serve' or 'tce serve'")


class CalibratedClassifierClient(_Common):
    """Synchronous client over ``tritonclient.http`` or ``tritonclient.grpc``."""

    def __init__(self, url: str | None = None, protocol: Protocol = "http", model: str = DEFAULT_MODEL,
                 timeout_s: float = 60.0) -> None:
        super().__init__(url, protocol, model, asynchronous=False)
        self.timeout_s = timeout_s
        if protocol == "http":
            self._client = self._module.InferenceServerClient(self.url, connection_timeout=timeout_s,
                                                              network_timeout=timeout_s)
        else:
            self._client = self._module.InferenceServerClient(self.url)
        self._connect()

    def _connect(self) -> None:
        try:
            live = self._client.is_server_live()
        except Exception as error:  # noqa: BLE001 - connection errors differ per protocol
            raise self._unavailable(error) from None
        if not live:
            raise ServerUnavailableError(f"the server at {self.url} is not live")
        try:
            ready = self._client.is_model_ready(self.model)
        except Exception as error:  # noqa: BLE001
            raise ModelNotReadyError(f"cannot query model {self.model!r}: {error}") from None
        if not ready:
            raise ModelNotReadyError(f"model {self.model!r} is not ready on {self.url}; "
                                     "check the server log for its load error")
        config = (self._client.get_model_config(self.model, as_json=True) if self.protocol == "grpc"
                  else self._client.get_model_config(self.model))
        self.schema, self.max_batch_size = _parse_config(self.protocol, config, self.model)

    def predict(self, records: Records) -> list[Prediction]:
        inputs = self._encode(records)
        rows = next(iter(inputs.values())).shape[0]
        predictions: list[Prediction] = []
        for part in _slices(rows, self.max_batch_size):
            predictions += self.infer_arrays(inputs, part)
        return predictions

    def infer_arrays(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)) -> list[Prediction]:
        """Send already-encoded input arrays (``schema.encode``) as one request."""
        infer_inputs, outputs = self._request(inputs, rows)
        try:
            result = self._client.infer(self.model, infer_inputs, outputs=outputs)
        except Exception as error:  # noqa: BLE001
            raise _classify(error, self) from None
        assert self.schema is not None
        return _decode(self.schema, {name: result.as_numpy(name) for name in _output_names(self.schema)})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "CalibratedClassifierClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCalibratedClassifierClient(_Common):
    """asyncio client over ``tritonclient.http.aio`` or ``tritonclient.grpc.aio``;
    ``predict`` sends a large input's requests concurrently."""

    def __init__(self, url: str | None = None, protocol: Protocol = "http", model: str = DEFAULT_MODEL,
                 max_concurrency: int = 8) -> None:
        super().__init__(url, protocol, model, asynchronous=True)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self._client = self._module.InferenceServerClient(self.url)

    async def connect(self) -> "AsyncCalibratedClassifierClient":
        try:
            live = await self._client.is_server_live()
        except Exception as error:  # noqa: BLE001
            raise self._unavailable(error) from None
        if not live:
            raise ServerUnavailableError(f"the server at {self.url} is not live")
        try:
            ready = await self._client.is_model_ready(self.model)
        except Exception as error:  # noqa: BLE001
            raise ModelNotReadyError(f"cannot query model {self.model!r}: {error}") from None
        if not ready:
            raise ModelNotReadyError(f"model {self.model!r} is not ready on {self.url}")
        config = (await self._client.get_model_config(self.model, as_json=True) if self.protocol == "grpc"
                  else await self._client.get_model_config(self.model))
        self.schema, self.max_batch_size = _parse_config(self.protocol, config, self.model)
        return self

    async def predict(self, records: Records) -> list[Prediction]:
        if self.schema is None:
            await self.connect()
        inputs = self._encode(records)
        rows = next(iter(inputs.values())).shape[0]
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(part: slice) -> list[Prediction]:
            async with limit:
                return await self.infer_arrays(inputs, part)

        parts = await asyncio.gather(*(one(part) for part in _slices(rows, self.max_batch_size)))
        return [prediction for part in parts for prediction in part]

    async def infer_arrays(self, inputs: dict[str, np.ndarray], rows: slice = slice(None)) -> list[Prediction]:
        infer_inputs, outputs = self._request(inputs, rows)
        try:
            result = await self._client.infer(self.model, infer_inputs, outputs=outputs)
        except Exception as error:  # noqa: BLE001
            raise _classify(error, self) from None
        assert self.schema is not None
        return _decode(self.schema, {name: result.as_numpy(name) for name in _output_names(self.schema)})

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncCalibratedClassifierClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _classify(error: BaseException, client: _Common) -> Exception:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return InferenceError(error.message() or str(error))
    if isinstance(error, (ConnectionError, OSError, TimeoutError)):
        return client._unavailable(error)
    return InferenceError(f"{type(error).__name__}: {error}")
