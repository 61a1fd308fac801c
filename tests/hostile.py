"""Raw requests a hostile or careless caller can send, below the SDK: KServe v2 JSON
bodies, binary-tensor bodies with hand-made BYTES framing, and raw gRPC tensors.

The demo schema (one text field, 5 numerics, 3 categoricals) is assumed throughout.
"""
from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from tce_client import DEFAULT_MODEL

ENSEMBLE = DEFAULT_MODEL
GOOD_RECORD = {"dialogue": ["buyer: hello there"], "numeric_features": [1.0, 2.0, 3.0, 4.0, 5.0],
               "categorical_features": ["card", "US", "toys"]}


def bytes_element(value: bytes) -> bytes:
    """Triton's BYTES framing: a little-endian uint32 length, then the bytes."""
    return struct.pack("<I", len(value)) + value


def json_body(record: dict[str, list[Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A one-row KServe v2 JSON request; ``overrides`` replace whole input entries."""
    record = record or GOOD_RECORD
    datatypes = {"dialogue": "BYTES", "numeric_features": "FP64", "categorical_features": "BYTES"}
    inputs = []
    for name, values in record.items():
        entry = {"name": name, "shape": [1, len(values)], "datatype": datatypes[name], "data": values}
        inputs.append(overrides.get(name, entry))
    return {"inputs": inputs}


def post(http_url: str, body: bytes, headers: dict[str, str] | None = None, path: str | None = None,
         timeout: float = 60) -> tuple[int | str, bytes]:
    """POST and return (status, body); a dropped connection returns ('EXC', message)."""
    url = f"http://{http_url}{path or f'/v2/models/{ENSEMBLE}/infer'}"
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return "EXC", repr(error).encode()


def post_json(http_url: str, body: dict[str, Any] | bytes, **kwargs: Any) -> tuple[int | str, bytes]:
    return post(http_url, body if isinstance(body, bytes) else json.dumps(body).encode(), **kwargs)


def post_binary(http_url: str, text_blob: bytes | None = None, rows: int = 1, **kwargs: Any
                ) -> tuple[int | str, bytes]:
    """A binary-tensor request whose ``dialogue`` payload is ``text_blob`` as given
    (default: well-formed), so its BYTES framing can be broken on purpose."""
    text_blob = text_blob if text_blob is not None else b"".join(bytes_element(b"buyer: hello") for _ in range(rows))
    numeric = np.ones((rows, 5)).tobytes()
    categorical = b"".join(bytes_element(v) for _ in range(rows) for v in (b"card", b"US", b"toys"))
    header = {"inputs": [
        {"name": "dialogue", "shape": [rows, 1], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(text_blob)}},
        {"name": "numeric_features", "shape": [rows, 5], "datatype": "FP64",
         "parameters": {"binary_data_size": len(numeric)}},
        {"name": "categorical_features", "shape": [rows, 3], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(categorical)}}],
        "outputs": [{"name": "abuse_calibrated", "parameters": {"binary_data": False}}]}
    encoded = json.dumps(header).encode()
    return post(http_url, encoded + text_blob + numeric + categorical,
                headers={"Inference-Header-Content-Length": str(len(encoded)),
                         "Content-Type": "application/octet-stream"}, **kwargs)


def abuse_score(body: bytes) -> list[float]:
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    return outputs["abuse_calibrated"]["data"]
