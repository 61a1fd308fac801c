"""Seed 003's handler contract for SageMaker's PyTorch serving containers.

``tce package-sagemaker BUNDLE OUT.tar.gz --handler pytorch`` puts the bundle at the
archive's root and this module (with ``tce_backends`` and ``tce_client``) under
``code/``; the container calls, per request::

    model = model_fn("/opt/ml/model")                       # once
    data = input_fn(request_body, request_content_type)
    prediction = predict_fn(data, model)
    body, content_type = output_fn(prediction, accept)

The whole ensemble runs in process: the same steps the Triton models run, chained by
the reference pipeline. Requests: ``application/json`` (a record, a list of records,
or ``{"instances": [...]}``), ``text/csv`` with a header row, ``application/x-npy``
(a structured array whose field names are the record fields). Responses per
``Accept``: seed 000's JSON (``legacy-score``, ``calibrated-score``, ``output-label``;
``prob_NN``/``calibrated_prob_NN`` for multiclass; one object per task when there are
several) or the same fields as CSV. Anything else is a ``ValueError`` naming what is
supported, which the container answers with an error status.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tce_backends.bundle import Bundle
from tce_backends.errors import UsageError
from tce_backends.reference import ReferencePipeline
from tce_client.results import Prediction, predictions_from_outputs
from tce_client.schema import EnsembleSchema, schema_for
from tce_client.seed_format import seed_csv, seed_rows

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
REQUEST_TYPES = (JSON, CSV, NPY)
RESPONSE_TYPES = (JSON, CSV)


class UnsupportedContentType(UsageError):
    """A request or response media type the handler does not speak."""


@dataclass(frozen=True)
class LoadedEnsemble:
    pipeline: ReferencePipeline
    schema: EnsembleSchema


def _media_type(value: str | None, default: str) -> str:
    media = (value or "").split(";")[0].strip().lower()
    return default if media in ("", "*/*") else media


def model_fn(model_dir: str) -> LoadedEnsemble:
    """The bundle at ``model_dir`` (the archive's root) as an in-process ensemble."""
    bundle = Bundle.load(Path(model_dir))
    return LoadedEnsemble(ReferencePipeline(bundle), schema_for(bundle.manifest))


def _records_from_json(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and "instances" in body:
        body = body["instances"]
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list) and all(isinstance(record, dict) for record in body):
        return body
    raise UsageError('application/json takes a record, a list of records or {"instances": [records]}')


def input_fn(request_body: bytes | str, request_content_type: str) -> pd.DataFrame:
    """The request's records, one row each."""
    media = _media_type(request_content_type, JSON)
    text = request_body.decode("utf-8") if isinstance(request_body, (bytes, bytearray)) and media != NPY \
        else request_body
    if media == JSON:
        try:
            records = _records_from_json(json.loads(text))
        except json.JSONDecodeError as error:
            raise UsageError(f"the application/json body is not JSON: {error}") from None
        return pd.DataFrame(records, index=pd.RangeIndex(len(records)))
    if media == CSV:
        try:
            return pd.read_csv(io.StringIO(str(text)), keep_default_na=True)
        except (ValueError, pd.errors.ParserError) as error:
            raise UsageError(f"the text/csv body needs a header row and records: {error}") from None
    if media == NPY:
        raw = request_body.encode() if isinstance(request_body, str) else bytes(request_body)
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as error:
            raise UsageError(f"the application/x-npy body is not a .npy array without objects: {error}") from None
        if array.dtype.names is None:
            raise UsageError("application/x-npy needs a structured array whose field names are the record fields "
                             f"(got a plain {array.dtype} array of shape {array.shape})")
        frame = pd.DataFrame({name: array[name].reshape(-1) for name in array.dtype.names})
        for name in frame.columns:
            if frame[name].dtype.kind == "S":
                frame[name] = frame[name].str.decode("utf-8")
        return frame
    raise UnsupportedContentType(f"unsupported request content type {request_content_type!r}; use one of "
                                 f"{', '.join(REQUEST_TYPES)}")


def predict_fn(input_data: pd.DataFrame, model: LoadedEnsemble) -> list[Prediction]:
    """Raw and calibrated scores per record and task, as the served ensemble returns them."""
    inputs = model.schema.encode(input_data)
    outputs = model.pipeline.predict(inputs)
    return predictions_from_outputs(model.schema, outputs)


def output_fn(prediction: list[Prediction], accept: str) -> tuple[str, str]:
    """(body, content type) in seed 000's formats."""
    media = _media_type(accept, JSON)
    if media == JSON:
        return json.dumps({"predictions": seed_rows(prediction)}), JSON
    if media == CSV:
        return seed_csv(seed_rows(prediction)), CSV
    raise UnsupportedContentType(f"unsupported Accept {accept!r}; use one of {', '.join(RESPONSE_TYPES)}")
