"""The front door: every request a caller sends is parsed once, checked against the
served model's signature and an allow-list, and forwarded as a message built here.

Triton 2.51 can be crashed by single requests (a huge declared shape, a
``classification`` parameter on a BYTES output), reads the first of duplicated JSON
keys where most parsers keep the last, and serves SageMaker's model-management API
without a key. A guard that re-parses and passes the original bytes on can be
bypassed; this door never passes caller bytes on:

- HTTP/REST (KServe v2 JSON or binary tensors): strict JSON (duplicate keys, unknown
  fields and parameters refused), every input checked against the model's config,
  then re-encoded as a binary-tensor request with a canonical JSON header;
- gRPC: the ``ModelInferRequest`` is decoded, checked the same way and re-encoded;
- SageMaker (``GET /ping``, ``POST /invocations``): the same path as HTTP inference.

nginx stands in front (``launcher``): it owns the caller connections (timeouts,
per-client limits, body caps, several workers); the door processes (``worker``)
check and rebuild messages; Triton listens on loopback only.
"""
from tce_gateway.config import DoorConfig, GatewayConfig, Limits, PredictionLogConfig, Replica
from tce_gateway.errors import GatewayError, Refusal

__all__ = ["DoorConfig", "GatewayConfig", "GatewayError", "Limits", "PredictionLogConfig", "Refusal", "Replica"]
