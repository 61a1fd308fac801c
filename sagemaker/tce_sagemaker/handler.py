"""Seed 003's handler contract for SageMaker's PyTorch serving containers.

``tce package-sagemaker BUNDLE OUT.tar.gz --handler pytorch`` puts the bundle at the
archive's root and this module (with ``tce_backends`` and ``tce_client``) under
``code/``; the container calls, per request::

    model = model_fn("/opt/ml/model")                       # once
    data = input_fn(request_body, request_content_type)
    prediction = predict_fn(data, model)
    body, content_type = output_fn(prediction, accept)

The whole ensemble runs in process: the same steps the Triton models run, chained by
the reference pipeline. Requests and responses are seed 003's formats, read and written
as the gateway's ``/invocations`` reads and writes them on the Triton image
(``tce_client.seed_requests``, ``tce_client.seed_format``):

- requests: ``application/json`` (a record, a list of records, or ``{"instances": [...]}``;
  ``null`` is missing), ``text/csv`` with a header line or without one (then each line holds
  the input fields in the order ``tce schema`` lists them), ``application/x-npy`` (a 2-D array
  in that order, or a structured array named by field; never unpickled);
- responses per ``Accept``: seed 000's JSON (``legacy-score``, ``calibrated-score``,
  ``output-label``; ``prob_NN``/``calibrated_prob_NN`` for multiclass; one object per task
  when there are several), the same fields as CSV, or as a structured ``.npy`` array.

A calibration that cannot be read does not stop the model: its tasks are served raw with
``calibration-fallback`` set in every record (seed 000's rule, as the served calibrator
does), and ``model_fn`` logs one warning. Anything a caller gets wrong is a ``UsageError``
(a ``ValueError``) naming the record and field, or the supported types.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tce_backends.bundle import Bundle
from tce_backends.reference import ReferencePipeline
from tce_client.results import Prediction, predictions_from_outputs
from tce_client.schema import EnsembleSchema, schema_for
from tce_client.seed_format import JSON, RESPONSE_TYPES, UnsupportedMediaType, response_type, seed_response
from tce_client.seed_requests import REQUEST_TYPES, SeedBody, encode_records, read_seed_body

__all__ = ["JSON", "REQUEST_TYPES", "RESPONSE_TYPES", "LoadedEnsemble", "UnsupportedContentType", "input_fn",
           "model_fn", "output_fn", "predict_fn"]
LOG = logging.getLogger(__name__)
UnsupportedContentType = UnsupportedMediaType  # the name this module has always raised


@dataclass(frozen=True)
class LoadedEnsemble:
    pipeline: ReferencePipeline
    schema: EnsembleSchema


def model_fn(model_dir: str) -> LoadedEnsemble:
    """The bundle at ``model_dir`` (the archive's root) as an in-process ensemble."""
    bundle = Bundle.load(Path(model_dir), strict_calibration=False)
    reasons = bundle.calibrator.fallback_reasons
    if reasons:
        LOG.warning("calibration unavailable for task(s) %s, serving raw scores with calibration-fallback set: %s",
                    ", ".join(repr(task) for task in reasons), "; ".join(sorted(set(reasons.values()))))
    return LoadedEnsemble(ReferencePipeline(bundle), schema_for(bundle.manifest))


def input_fn(request_body: bytes | str, request_content_type: str) -> SeedBody:
    """The request's records, read in their format (named by field in ``predict_fn``,
    where the model's fields are known)."""
    return read_seed_body(request_body, request_content_type)


def predict_fn(input_data: SeedBody | Any, model: LoadedEnsemble) -> list[Prediction]:
    """Raw and calibrated scores per record and task, as the served ensemble returns them.
    ``input_data``: what ``input_fn`` returns, or records (dicts, a DataFrame)."""
    records = input_data.records_for(model.schema.input_fields) if isinstance(input_data, SeedBody) else input_data
    outputs = model.pipeline.predict(encode_records(model.schema, records))
    return predictions_from_outputs(model.schema, outputs)


def output_fn(prediction: list[Prediction], accept: str) -> tuple[str | bytes, str]:
    """(body, content type) in seed 000's formats."""
    media = response_type(accept)
    return seed_response(prediction, media), media
