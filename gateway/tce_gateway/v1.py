"""KServe v1 style for people with records and curl: ``POST /v1/models/<ensemble>:predict``
with ``{"instances": [{field: value, ...}, ...]}``, answered with each task's raw and
calibrated probabilities by class name, its label and its decision.

The door encodes the records with the schema the ensemble publishes (``tce_client.schema``:
the same rules as the SDK, so a missing value is missing and a misspelt field is an error),
then sends Triton the same canonical binary request as for v2."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from tce_backends.contract import SCHEMA_PARAMETER
from tce_backends.errors import UsageError
from tce_client.results import Prediction, predictions_from_outputs
from tce_client.schema import EnsembleSchema
from tce_client.seed_requests import encode_records
from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.http_codec import answer_tensors, json_document
from tce_gateway.signatures import ModelSignature
from tce_gateway.tensors import InferRequest, InputTensor, frame_strings


def schema_of(signature: ModelSignature) -> EnsembleSchema:
    if signature.published_schema is None:
        raise Refusal(f"model '{signature.name}' publishes no '{SCHEMA_PARAMETER}': the v1 endpoint serves "
                      "ensembles built by tce build", 404)
    return EnsembleSchema.from_json(signature.published_schema)


def parse_predict(body: bytes, signature: ModelSignature, limits: Limits) -> tuple[InferRequest, EnsembleSchema]:
    """The canonical request for a v1 body, or a Refusal naming the record and field."""
    document = json_document(body, limits)
    if not isinstance(document, dict) or set(document) != {"instances"}:
        raise Refusal('a v1 request is {"instances": [{record}, ...]} and nothing else')
    instances = document["instances"]
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise Refusal("'instances' must be a non-empty list of records (JSON objects)")
    return encode(instances, signature, limits, noun="instances")


def encode(records: list[dict[str, Any]], signature: ModelSignature, limits: Limits, noun: str = "records"
           ) -> tuple[InferRequest, EnsembleSchema]:
    """Records as the canonical binary request, encoded by the SDK's rules (a field the
    model does not take is refused); a Refusal names the record and field at fault."""
    if signature.max_batch_size and len(records) > signature.max_batch_size:
        raise Refusal(f"{len(records)} {noun}; '{signature.name}' takes at most {signature.max_batch_size} "
                      "per request")
    schema = schema_of(signature)
    if len(records) * len(schema.input_fields) > limits.max_elements:
        raise Refusal(f"{len(records)} {noun} of {len(schema.input_fields)} fields take the request beyond the "
                      f"gateway's {limits.max_elements} elements", 413)
    try:
        arrays = encode_records(schema, records)
    except UsageError as error:
        raise Refusal(str(error)) from None
    inputs = []
    for name, array in arrays.items():
        if array.dtype == object:
            inputs.append(InputTensor(name, "BYTES", array.shape, frame_strings(signature.inputs[name],
                                                                                 array.reshape(-1))))
        else:
            inputs.append(InputTensor(name, "FP64", array.shape, np.ascontiguousarray(array, "<f8").tobytes()))
    return InferRequest(signature.name, "", "", tuple(inputs), (), binary_output=True), schema


def answer(status: int, headers: dict[str, str], body: bytes, schema: EnsembleSchema) -> dict[str, Any]:
    """Triton's binary answer as ``{"predictions": [...]}``, one object per record."""
    return {"predictions": [_record(p) for p in predictions(status, headers, body, schema)]}


def predictions(status: int, headers: dict[str, str], body: bytes, schema: EnsembleSchema) -> list[Prediction]:
    """Triton's binary answer to a request ``encode`` made, one ``Prediction`` per record."""
    if status != 200:
        raise Refusal(f"Triton refused the request: {_error(body)}", status if status in (400, 404, 503) else 502)
    return predictions_from_outputs(schema, answer_tensors(headers, body))


def _record(prediction: Prediction) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, task in prediction.tasks.items():
        record[name] = {"raw": {c: float(p) for c, p in zip(task.classes, task.raw, strict=True)},
                        "calibrated": {c: float(p) for c, p in zip(task.classes, task.calibrated, strict=True)},
                        "label": task.label, "decision": task.decision,
                        "calibration_fallback": bool(task.calibration_fallback)}
    record["calibration_version"] = prediction.calibration_version
    release = getattr(prediction, "release", "")
    if release:  # the release that answered (a server built with releases)
        record["release"] = release
    return record


def _error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))
    except ValueError:
        return body[:300].decode("utf-8", errors="replace")
