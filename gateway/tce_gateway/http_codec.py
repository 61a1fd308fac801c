"""KServe v2 HTTP/REST inference requests: JSON, or a JSON header followed by binary
tensors. Parsed strictly (duplicate keys, unknown fields and parameters are refused),
checked against the model, and re-encoded as a binary-tensor request whose header is
canonical JSON. Triton never sees a byte the caller wrote."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

import numpy as np

from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.signatures import ModelSignature, _short
from tce_gateway.tensors import (
    NUMPY_TYPES,
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
    unframe_strings,
)

REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
# The parameters a caller may set, by where they appear, with their JSON type. Everything
# else (sequence ids, priority, shared-memory regions, custom parameters) is refused.
REQUEST_PARAMETERS = {"binary_data_output": bool}
INPUT_PARAMETERS = {"binary_data_size": int}
OUTPUT_PARAMETERS = {"binary_data": bool, "classification": int}
HEADER_LENGTH = "Inference-Header-Content-Length"


class _Duplicate(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return result


def strict_json(data: bytes, what: str = "the request") -> Any:
    """JSON with every object's keys unique (after unescaping). Text that is not
    UTF-8 survives as lone surrogates, so the string holding it can be named later."""
    try:
        return json.loads(data.decode("utf-8", errors="surrogateescape"), object_pairs_hook=_unique)
    except _Duplicate as duplicate:
        raise Refusal(f"{what} has the key {_short(str(duplicate))} twice in one JSON object") from None
    except RecursionError:
        raise Refusal(f"{what}'s JSON is nested too deeply to be a KServe v2 request") from None
    except ValueError as error:
        raise Refusal(f"{what} is not valid JSON: {error}") from None


def _object(value: Any, allowed: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Refusal(f"{what} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise Refusal(f"{what} has the field {_short(unknown[0])}, which is not part of a KServe v2 request "
                      f"(allowed: {', '.join(sorted(allowed))})")
    return value


def parameters(value: Any, allowed: dict[str, type], what: str) -> dict[str, Any]:
    """A ``parameters`` object holding only allowed keys with values of their type."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refusal(f"{what}: 'parameters' must be a JSON object")
    for key, item in value.items():
        kind = allowed.get(key)
        if kind is None:
            accepted = ", ".join(allowed) or "none"
            raise Refusal(f"{what}: parameter {_short(key)} is not accepted here (accepted: {accepted})")
        if type(item) is not kind:
            raise Refusal(f"{what}: parameter '{key}' must be a {kind.__name__}, got {_short(item)}")
    return value


def _flatten(data: Any, expected: int, name: str) -> list:
    """The values of nested JSON ``data``, refused unless there are exactly ``expected``."""
    if not isinstance(data, list):
        data = [data]
    values: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            values.append(item)
            if len(values) > expected:
                raise Refusal(f"input '{name}': its shape holds {expected} values but data has more")
        else:
            stack.pop()
    if len(values) != expected:
        raise Refusal(f"input '{name}': its shape holds {expected} values but data has {len(values)}")
    return values


def _header_split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not re.fullmatch(r"[0-9]{1,10}", header_length) or not 0 < int(header_length) <= len(body):
        raise Refusal(f"{HEADER_LENGTH} (SageMaker: json-header-size) must be a positive integer within the "
                      f"body size, got {_short(header_length)}")
    cut = int(header_length)
    return body[:cut], body[cut:]


def json_document(data: bytes, limits: Limits) -> Any:
    """``strict_json`` of a request body, after a count that bounds the work of parsing it."""
    if data.count(b"[") + data.count(b"{") > limits.max_elements:  # before parsing: bounded work
        raise Refusal(f"the request holds more JSON arrays and objects than the gateway's {limits.max_elements}",
                      413)
    return strict_json(data)


def parse_infer(model: str, version: str, body: bytes, header_length: str | None, signature: ModelSignature,
                limits: Limits) -> InferRequest:
    """A checked ``InferRequest`` from a KServe v2 HTTP body, or a Refusal naming the problem."""
    header_bytes, binary = _header_split(body, header_length)
    return infer_request(model, version, json_document(header_bytes, limits), binary, signature, limits)


def infer_request(model: str, version: str, document: Any, binary: bytes, signature: ModelSignature,
                  limits: Limits) -> InferRequest:
    """A checked ``InferRequest`` from a parsed KServe v2 JSON header and the binary data after it."""
    request = _object(document, REQUEST_FIELDS, "the request")
    request_id = request.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > limits.max_id_chars or not _printable(request_id):
        raise Refusal(f"the request 'id' must be printable text of at most {limits.max_id_chars} characters")
    options = parameters(request.get("parameters"), REQUEST_PARAMETERS, "the request")
    entries = request.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise Refusal("the request needs a non-empty 'inputs' list")
    inputs, seen, offset, budget = [], set(), 0, limits.max_elements
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        entry = _object(entry, INPUT_FIELDS, f"input {_short(name)}" if isinstance(name, str) else "every input")
        tensor, offset, used = _input(entry, signature, seen, binary, offset, budget, limits)
        budget -= used
        inputs.append(tensor)
    if offset != len(binary):
        raise Refusal(f"the body holds {len(binary) - offset} bytes beyond the inputs' binary_data_size")
    check_complete(signature, seen)
    return InferRequest(model, version, request_id, tuple(inputs), _outputs(request.get("outputs"), signature),
                        options.get("binary_data_output"))


def _input(entry: dict[str, Any], signature: ModelSignature, seen: set[str], binary: bytes, offset: int,
           budget: int, limits: Limits) -> tuple[InputTensor, int, int]:
    spec = input_spec(signature, entry.get("name"), seen)
    check_datatype(spec, entry.get("datatype"))
    elements = signature.elements(spec, entry.get("shape"), budget, limits.max_elements)
    size = parameters(entry.get("parameters"), INPUT_PARAMETERS, f"input '{spec.name}'").get("binary_data_size")
    if ("data" in entry) == (size is not None):
        raise Refusal(f"input '{spec.name}': needs either JSON 'data' or a 'binary_data_size' parameter")
    if size is not None:
        if not 0 <= size <= len(binary) - offset:
            raise Refusal(f"input '{spec.name}': binary_data_size {size} is beyond the body")
        raw = check_raw(spec, elements, binary[offset:offset + size])
        offset += size
    else:
        values = _flatten(entry["data"], elements, spec.name)
        raw = numbers_to_raw(spec, values) if spec.numeric else frame_strings(spec, values)
    return InputTensor(spec.name, spec.datatype, tuple(entry["shape"]), raw), offset, elements


def _outputs(entries: Any, signature: ModelSignature) -> tuple[RequestedOutput, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise Refusal("'outputs' must be a list")
    outputs, seen = [], set()
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        entry = _object(entry, OUTPUT_FIELDS, f"output {_short(name)}" if isinstance(name, str) else "every output")
        options = parameters(entry.get("parameters"), OUTPUT_PARAMETERS, f"output {_short(name)}")
        classification = check_output(signature, name, options.get("classification"), seen)
        outputs.append(RequestedOutput(name, options.get("binary_data"), classification))
    return tuple(outputs)


def _printable(text: str) -> bool:
    """Text Triton can echo back: no control characters, no lone surrogates (invalid UTF-8)."""
    return text.isprintable() and not any("\ud800" <= c <= "\udfff" for c in text)


def encode_infer(request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The body and headers forwarded to Triton: a canonical JSON header, then every
    input as binary data."""
    header: dict[str, Any] = {}
    if request.id:
        header["id"] = request.id
    if request.binary_output is not None:
        header["parameters"] = {"binary_data_output": request.binary_output}
    header["inputs"] = [{"name": t.name, "shape": list(t.shape), "datatype": t.datatype,
                         "parameters": {"binary_data_size": len(t.raw)}} for t in request.inputs]
    if request.outputs:
        header["outputs"] = [_output_entry(o) for o in request.outputs]
    encoded = json.dumps(header, separators=(",", ":")).encode("ascii")
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(encoded))}
    return b"".join([encoded, *(t.raw for t in request.inputs)]), headers


def _output_entry(output: RequestedOutput) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": output.name}
    options: dict[str, Any] = {}
    if output.binary is not None:
        options["binary_data"] = output.binary
    if output.classification is not None:
        options["classification"] = output.classification
    if options:
        entry["parameters"] = options
    return entry


def answer_tensors(headers: Mapping[str, str], body: bytes) -> dict[str, np.ndarray]:
    """The output tensors of a successful Triton HTTP answer (JSON data or binary tensors; BYTES
    elements as ``bytes``, numbers little-endian as the protocol sends them)."""
    length = int(headers.get(HEADER_LENGTH, len(body)))
    header = json.loads(body[:length])
    offset, outputs = length, {}
    for output in header.get("outputs", ()):
        shape, datatype = tuple(output["shape"]), output["datatype"]
        dtype = None if datatype == "BYTES" else np.dtype(NUMPY_TYPES[datatype]).newbyteorder("<")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = output.get("data", [])
            values = np.array([str(v).encode() for v in data], dtype=object) if dtype is None else \
                np.asarray(data, dtype=dtype)
        else:
            raw = body[offset:offset + int(size)]
            offset += int(size)
            values = np.array(unframe_strings(raw), dtype=object) if dtype is None else np.frombuffer(raw, dtype)
        outputs[output["name"]] = values.reshape(shape)
    return outputs
