"""KServe v2 gRPC inference requests: the caller's ``ModelInferRequest`` is decoded,
checked against the model like an HTTP request, and a new message holding only what
was checked (every input as raw contents) is encoded for Triton. Unknown fields,
parameters and typed contents of the wrong kind never reach it."""
from __future__ import annotations

import json

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.signatures import ModelSignature, _short
from tce_gateway.tensors import (
    InferRequest,
    InputTensor,
    RequestedOutput,
    check_complete,
    check_datatype,
    check_output,
    check_raw,
    frame_strings,
    input_spec,
    numbers_to_raw,
)

# Which typed field of InferTensorContents may carry each datatype (FP16 and BF16: raw only).
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def decode_infer(payload: bytes) -> service_pb2.ModelInferRequest:
    try:
        return service_pb2.ModelInferRequest.FromString(payload)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise Refusal(f"the message is not a valid ModelInferRequest: {error}") from None


def parse_infer(message: service_pb2.ModelInferRequest, signature: ModelSignature, limits: Limits) -> InferRequest:
    """A checked ``InferRequest`` from a decoded message, or a Refusal naming the problem."""
    if message.parameters:
        raise Refusal(f"the request: parameter {_short(sorted(message.parameters)[0])} is not accepted here "
                      "(accepted: none)")
    if len(message.id) > limits.max_id_chars or not message.id.isprintable():
        raise Refusal(f"the request 'id' must be printable text of at most {limits.max_id_chars} characters")
    if not message.inputs:
        raise Refusal("the request needs a non-empty 'inputs' list")
    raw_contents = message.raw_input_contents
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise Refusal(f"the request has {len(raw_contents)} raw_input_contents for {len(message.inputs)} inputs; "
                      "give raw contents for every input or for none")
    inputs, seen, budget = [], set(), limits.max_elements
    for index, entry in enumerate(message.inputs):
        spec = input_spec(signature, entry.name, seen)
        if entry.parameters:
            raise Refusal(f"input '{spec.name}': parameter {_short(sorted(entry.parameters)[0])} is not accepted "
                          "here (accepted: none)")
        check_datatype(spec, entry.datatype)
        elements = signature.elements(spec, list(entry.shape), budget, limits.max_elements)
        budget -= elements
        raw = _contents(spec.name, entry, elements, raw_contents[index] if raw_contents else None, signature)
        inputs.append(InputTensor(spec.name, spec.datatype, tuple(entry.shape), raw))
    check_complete(signature, seen)
    return InferRequest(message.model_name, message.model_version, message.id, tuple(inputs),
                        _outputs(message, signature))


def _contents(name: str, entry: service_pb2.ModelInferRequest.InferInputTensor, elements: int, raw: bytes | None,
              signature: ModelSignature) -> bytes:
    spec = signature.inputs[name]
    present = [field.name for field, _ in entry.contents.ListFields()]
    if raw is not None:
        if present:
            raise Refusal(f"input '{name}': has typed contents beside raw_input_contents; give one of them")
        return check_raw(spec, elements, raw)
    expected = CONTENTS_FIELDS.get(spec.datatype)
    if expected is None or any(field != expected for field in present):
        raise Refusal(f"input '{name}': a {spec.datatype} tensor goes in "
                      f"{expected or 'raw_input_contents'}, got {', '.join(present) or 'no contents'}")
    values = list(getattr(entry.contents, expected))
    if len(values) != elements:
        raise Refusal(f"input '{name}': its shape holds {elements} values but {expected} has {len(values)}")
    return numbers_to_raw(spec, values) if spec.numeric else frame_strings(spec, values)


def _outputs(message: service_pb2.ModelInferRequest, signature: ModelSignature) -> tuple[RequestedOutput, ...]:
    outputs, seen = [], set()
    for entry in message.outputs:
        classification = None
        for key, value in entry.parameters.items():
            kind = value.WhichOneof("parameter_choice")
            if key != "classification" or kind not in ("int64_param", "uint64_param"):
                raise Refusal(f"output {_short(entry.name)}: parameter {_short(key)} is not accepted here "
                              "(accepted: classification, an integer)")
            classification = getattr(value, kind)
        outputs.append(RequestedOutput(entry.name, None, check_output(signature, entry.name, classification, seen)))
    return tuple(outputs)


# Triton's HTTP status for each of its error codes -> the gRPC status its gRPC frontend gives.
HTTP_TO_GRPC = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS", 500: "INTERNAL",
                501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}


class TritonError(Exception):
    """Triton refused the request: its gRPC status name and message, for the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def response_from_http(status: int, headers: dict[str, str], body: bytes) -> bytes:
    """Triton's binary-tensor HTTP answer as the ``ModelInferResponse`` its gRPC frontend
    would have sent (the door forwards gRPC inference over HTTP: one hop cheaper)."""
    if status != 200:
        try:
            message = str(json.loads(body).get("error", ""))
        except ValueError:
            message = body[:500].decode("utf-8", errors="replace")
        raise TritonError(HTTP_TO_GRPC.get(status, "UNKNOWN"), message)
    length = int(headers.get("Inference-Header-Content-Length", len(body)))
    header = json.loads(body[:length])
    response = service_pb2.ModelInferResponse(model_name=header.get("model_name", ""),
                                              model_version=header.get("model_version", ""),
                                              id=header.get("id", ""))
    offset = length
    for output in header.get("outputs", ()):
        response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        size = int(output.get("parameters", {}).get("binary_data_size", 0))
        response.raw_output_contents.append(body[offset:offset + size])
        offset += size
    return response.SerializeToString()


def encode_infer(request: InferRequest) -> bytes:
    """A fresh ``ModelInferRequest`` for Triton from the checked request."""
    message = service_pb2.ModelInferRequest(model_name=request.model, model_version=request.version, id=request.id)
    for tensor in request.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        message.raw_input_contents.append(tensor.raw)
    for output in request.outputs:
        added = message.outputs.add(name=output.name)
        if output.classification is not None:
            added.parameters["classification"].int64_param = output.classification
    return message.SerializeToString()
