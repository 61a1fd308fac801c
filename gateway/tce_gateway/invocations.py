"""SageMaker's ``POST /invocations`` on the Triton image: seed 003's records, and KServe v2.

A body is read by its Content-Type:

- ``application/vnd.sagemaker-triton.binary+json;json-header-size=N``: KServe v2 with binary
  tensors (Triton's own SageMaker form; read in ``http_app``);
- ``text/csv`` and ``application/x-npy``: seed 003's records (``tce_client.seed_requests``);
- anything else is JSON: a KServe v2 request when it is an object with an ``"inputs"`` key,
  otherwise seed 003's records (a record, a list of them, ``{"instances": [...]}``).

Records go the v1 way (``v1.encode``: the SDK's rules, the same canonical binary request,
the same caps) and are answered in seed 000's JSON, CSV or npy, as ``Accept`` asks
(``tce_client.seed_format``; one task's fields, or ``{task: fields}`` for several). A
KServe v2 request gets Triton's own answer, whatever ``Accept`` says."""
from __future__ import annotations

from dataclasses import dataclass

from tce_backends.errors import UsageError
from tce_client.schema import EnsembleSchema
from tce_client.seed_format import CSV, JSON, NPY, UnsupportedMediaType, media_type, response_type, seed_response
from tce_client.seed_requests import BodyLimits, BodyTooLarge, SeedBody, json_records, read_seed_body
from tce_gateway import v1
from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.http_codec import infer_request, json_document
from tce_gateway.signatures import ModelSignature
from tce_gateway.tensors import InferRequest

V2_KEY = "inputs"


@dataclass(frozen=True)
class Invocation:
    request: InferRequest
    schema: EnsembleSchema | None = None   # None: a KServe v2 request, answered as Triton answers it
    response_type: str = JSON


def read_invocation(body: bytes, content_type: str | None, accept: str | None, signature: ModelSignature,
                    limits: Limits) -> Invocation:
    """The request to forward for an ``/invocations`` body (not Triton's binary form), or a
    Refusal naming the record and field, or what else is wrong."""
    media = media_type(content_type, JSON)
    body_limits = BodyLimits(max_records=signature.max_batch_size or None, max_elements=limits.max_elements)
    try:
        if media in (CSV, NPY):
            seed = read_seed_body(body, media, body_limits)
        else:
            document = json_document(body, limits)
            if isinstance(document, dict) and V2_KEY in document:
                return Invocation(infer_request(signature.name, "", document, b"", signature, limits))
            if document == {}:
                raise Refusal('the body is an empty JSON object: send seed 003\'s records (a record, a list of '
                              'records or {"instances": [records]}) or a KServe v2 request {"inputs": [...]}')
            seed = json_records(document, body_limits)
        answer_type = _response_type(accept)
        return _seed_invocation(seed, answer_type, signature, limits)
    except BodyTooLarge as error:
        raise Refusal(str(error), 413) from None
    except UsageError as error:
        raise Refusal(str(error)) from None


def _response_type(accept: str | None) -> str:
    try:
        return response_type(accept)
    except UnsupportedMediaType as error:
        raise Refusal(str(error), 406) from None


def _seed_invocation(seed: SeedBody, answer_type: str, signature: ModelSignature, limits: Limits) -> Invocation:
    schema = v1.schema_of(signature)
    request, schema = v1.encode(seed.records_for(schema.input_fields), signature, limits)
    return Invocation(request, schema, answer_type)


def seed_answer(status: int, headers: dict[str, str], body: bytes, schema: EnsembleSchema, answer_type: str
                ) -> bytes:
    """The body of the answer to a seed request, from Triton's binary answer."""
    answer = seed_response(v1.predictions(status, headers, body, schema), answer_type)
    return answer.encode("utf-8") if isinstance(answer, str) else answer
