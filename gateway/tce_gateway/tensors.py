"""The one form every accepted request takes before it is forwarded: inputs as raw
little-endian bytes (BYTES as Triton's length-prefixed elements), each checked against
the model's signature. Both protocols' codecs build it; both encoders read only it."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from tce_gateway.errors import Refusal
from tce_gateway.signatures import ITEM_SIZES, ModelSignature, TensorSpec

NUMPY_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
               "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
               "FP32": np.float32, "FP64": np.float64}
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None          # HTTP only: the output's "binary_data" parameter
    classification: int | None = None   # top-k classes, numeric outputs only


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str
    id: str
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...]
    binary_output: bool | None = None   # HTTP only: "binary_data_output"


def input_spec(signature: ModelSignature, name: object, seen: set[str]) -> TensorSpec:
    """The config of the input called ``name``; refuses unknown and repeated names."""
    if not isinstance(name, str) or not name:
        raise Refusal("every input needs a non-empty string 'name'")
    spec = signature.inputs.get(name)
    if spec is None:
        raise Refusal(f"input {name!r} is not an input of '{signature.name}' "
                      f"(it takes {', '.join(signature.inputs) or 'none'})")
    if name in seen:
        raise Refusal(f"input '{name}' is given twice")
    seen.add(name)
    return spec


def check_datatype(spec: TensorSpec, datatype: object) -> None:
    if datatype != spec.datatype:
        raise Refusal(f"input '{spec.name}': datatype {datatype!r} where the model takes {spec.datatype}")


def check_complete(signature: ModelSignature, seen: set[str]) -> None:
    missing = [name for name, spec in signature.inputs.items() if name not in seen and not spec.optional]
    if missing:
        raise Refusal(f"input '{missing[0]}' is missing (the model needs {', '.join(missing)})")


def check_raw(spec: TensorSpec, elements: int, raw: bytes) -> bytes:
    """``raw`` unchanged if it holds exactly ``elements`` elements of the input's datatype."""
    size = ITEM_SIZES[spec.datatype]
    if size:
        if len(raw) != elements * size:
            raise Refusal(f"input '{spec.name}': {len(raw)} bytes where {elements} {spec.datatype} values take "
                          f"{elements * size}")
        return raw
    offset = 0
    for index in range(elements):
        if offset + 4 > len(raw):
            raise Refusal(f"input '{spec.name}': the data ends before element {index} of {elements} "
                          "(BYTES elements are a 4-byte little-endian length, then the bytes)")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4 + length
        if offset > len(raw):
            raise Refusal(f"input '{spec.name}': element {index} claims {length} bytes, more than the data holds")
    if offset != len(raw):
        raise Refusal(f"input '{spec.name}': {len(raw) - offset} bytes beyond its {elements} elements")
    return raw


def unframe_strings(raw: bytes) -> list[bytes]:
    """The elements of BYTES data whose framing is known to be whole (``check_raw`` passed it, or
    Triton wrote it): each a 4-byte little-endian length, then the bytes."""
    values, at = [], 0
    while at < len(raw):
        (size,) = _LENGTH.unpack_from(raw, at)
        values.append(raw[at + 4:at + 4 + size])
        at += 4 + size
    return values


def frame_strings(spec: TensorSpec, values: Iterable[object]) -> bytes:
    """Text or bytes elements in Triton's BYTES framing; text must be valid UTF-8."""
    parts = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refusal(f"input '{spec.name}': data element {index} is not valid UTF-8 text") from None
        elif not isinstance(value, bytes):
            raise Refusal(f"input '{spec.name}': data element {index} is {_kind(value)} where a string belongs "
                          "(send missing text as \"\")")
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def numbers_to_raw(spec: TensorSpec, values: list) -> bytes:
    """JSON or protobuf numbers as the input's datatype; refuses other kinds and values
    the datatype cannot hold (NaN and infinities stay: the model's steps judge them)."""
    datatype = spec.datatype
    if datatype == "BOOL":
        wrong = next((i for i, v in enumerate(values) if type(v) is not bool), None)
    else:
        wrong = next((i for i, v in enumerate(values) if type(v) not in (int, float)), None)
        if wrong is None and datatype not in ("FP16", "BF16", "FP32", "FP64"):
            wrong = next((i for i, v in enumerate(values) if type(v) is not int), None)
    if wrong is not None:
        raise Refusal(f"input '{spec.name}': data element {wrong} is {_kind(values[wrong])} where a "
                      f"{datatype} value belongs (send a missing number as NaN)")
    try:
        if datatype == "BF16":
            as_float = np.asarray(values, dtype=np.float32)
            return (as_float.view(np.uint32) >> 16).astype("<u2").tobytes()
        array = np.asarray(values, dtype=NUMPY_TYPES[datatype])
    except OverflowError:
        raise Refusal(f"input '{spec.name}': a value is outside the range of {datatype}") from None
    if array.dtype.kind in "iu" and values and (min(values) < np.iinfo(array.dtype).min
                                                or max(values) > np.iinfo(array.dtype).max):
        raise Refusal(f"input '{spec.name}': a value is outside the range of {datatype}")
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def check_output(signature: ModelSignature, name: object, classification: object, seen: set[str]) -> int | None:
    """Refuses unknown or repeated outputs, and ``classification`` where Triton 2.51
    cannot apply it (BYTES outputs: the server dies of SIGFPE) or beyond the classes."""
    if not isinstance(name, str) or name not in signature.outputs:
        raise Refusal(f"output {_kind(name) if not isinstance(name, str) else repr(name)} is not an output of "
                      f"'{signature.name}' (it returns {', '.join(signature.outputs)})")
    if name in seen:
        raise Refusal(f"output '{name}' is requested twice")
    seen.add(name)
    if classification is None:
        return None
    spec = signature.outputs[name]
    classes = int(np.prod([d for d in spec.dims if d > 0])) if spec.dims else 1
    if not spec.numeric:
        raise Refusal(f"output '{name}': parameter 'classification' applies only to numeric outputs, "
                      f"'{name}' is {spec.datatype}")
    if type(classification) is not int or not 1 <= classification <= classes:
        raise Refusal(f"output '{name}': parameter 'classification' must be an integer in 1..{classes}, "
                      f"got {classification!r}")
    return classification


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
