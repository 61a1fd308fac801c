"""The attack table: kinds of bad input a careless or hostile caller can send, each
sent beside good requests to a real server over one route, and what came of it.

Routes:
    gateway     the front door's HTTP and gRPC ports (nginx, then the checking door)
    sagemaker   the front door's SageMaker port: /invocations and whatever else a caller tries
    direct      Triton's own loopback ports, as a process on the host reaches them; kinds that
                crash or flood Triton 2.51 itself are not sent there (``direct=SKIP``)

Outcomes:
    clear error     refused (HTTP 4xx / a gRPC client-error code) naming the field at fault
    unclear error   refused, but with the wrong status or without naming the field
    default         answered, with the documented default (empty text, NaN, unseen category, ...)
    crash           the server process died
    hang            no answer within the time limit
    harmed          a good request sent beside it failed, got another answer, or waited > 10 s
    loaded          a model was loaded (or its code ran) without the admin key

    .venv/bin/python -m tests.attacks --repository model_repository [--route gateway|sagemaker|direct]

prints the table (the demo schema: one text field, 5 numerics, 3 categoricals);
``tests/integration/test_attack_table.py`` asserts it for every route in ``make test``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import functools
import gzip
import json
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from tests.hostile import ENSEMBLE, GOOD_RECORD, abuse_score, bytes_element, json_body, post

CLEAR, UNCLEAR, DEFAULT, CRASH, HANG, HARMED, LOADED = ("clear error", "unclear error", "default", "crash", "hang",
                                                        "harmed", "loaded")
SKIP = "not sent"
TIMEOUT_S = 30.0
SLOW_NEIGHBOUR_S = 10.0
ROUTES = ("gateway", "sagemaker", "direct")
HEADER_LENGTH = "Inference-Header-Content-Length"
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json;json-header-size="


@dataclass(frozen=True)
class Target:
    route: str                       # gateway | sagemaker | direct
    http_url: str
    grpc_url: str | None
    triton_http: str                 # Triton itself, to check that nothing was loaded
    marker_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def infer_path(self, model: str = ENSEMBLE) -> str | None:
        if self.route == "sagemaker":
            return "/invocations" if model == ENSEMBLE else None
        return f"/v2/models/{model}/infer"

    def headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        """SageMaker states the JSON header length in the content type."""
        headers = dict(headers or {})
        if self.route == "sagemaker" and HEADER_LENGTH in headers:
            headers["Content-Type"] = SAGEMAKER_BINARY + headers.pop(HEADER_LENGTH)
        return headers


Send = Callable[[Target], tuple[Any, str]]


@dataclass(frozen=True)
class Attack:
    name: str
    channel: str                     # http-json | http-binary | grpc | step | admin
    send: Send                       # -> (status, message or body text)
    expect: str                      # a word the error must carry (the field at fault), or DEFAULT
    direct: str | None = None        # what Triton itself gives when it differs from the door; SKIP: never sent
    # Triton's own parser takes seconds over it, so neighbours sent straight to Triton wait (on a busy
    # machine past SLOW_NEIGHBOUR_S): a cost the door exists to refuse, judged on its routes only.
    slows_triton: bool = False

    def expected(self, route: str) -> str:
        return self.direct if route == "direct" and self.direct is not None else self.expect

    def applies(self, target: Target) -> bool:
        if target.route == "direct":
            return self.direct != SKIP
        if target.route == "sagemaker":
            return self.channel in ("http-json", "http-binary", "admin")
        return True


# -- HTTP JSON -------------------------------------------------------------------------

def _entry(name: str, datatype: str, shape: list, data: Any) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _json(**overrides: Any) -> Send:
    """A one-record JSON request with inputs replaced (``None`` drops one)."""
    body = json_body()
    named = {i["name"]: i for i in body["inputs"]}
    for name, entry in overrides.items():
        if entry is None:
            named.pop(name, None)
        else:
            named[name] = entry
    return _raw(json.dumps({"inputs": list(named.values())}).encode())


def _raw(body: bytes, headers: dict | None = None, model: str = ENSEMBLE) -> Send:
    def send(target: Target) -> tuple[Any, str]:
        status, answer = post(target.http_url, body, headers=target.headers(headers), path=target.infer_path(model),
                              timeout=TIMEOUT_S)
        return status, answer.decode(errors="replace")
    return send


def _json_text(transform: Callable[[str], str]) -> Send:
    return _raw(transform(json.dumps(json_body())).encode())


def _with(**fields: Any) -> Send:
    """The good JSON request with top-level fields added or replaced."""
    return _raw(json.dumps({**json_body(), **fields}).encode())


def _record(**values: Any) -> Send:
    record = {**GOOD_RECORD, **values}
    return _json(**{k: _entry(k, "BYTES" if k != "numeric_features" else "FP64", [1, len(v)], v)
                    for k, v in record.items()})


HUGE = 1099511627776


@functools.lru_cache(maxsize=1)
def _gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """About 1 MB of gzip that inflates to ``inflated`` bytes of spaces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * (1 << 20)
    return b"".join([*(packer.compress(chunk) for _ in range(inflated // len(chunk))), packer.flush()])


def _lazy(make_body: Callable[[], bytes], headers: dict | None = None) -> Send:
    return lambda target: _raw(make_body(), headers)(target)


def _duplicate_key_body(first: str, key: str = "shape") -> bytes:
    """The good request whose numeric input states ``key`` twice: first ``first``, then the
    good value. Triton 2.51 reads the first copy, most parsers the last."""
    body = json.dumps(json_body())
    good = '"shape": [1, 5], "datatype": "FP64"'
    assert good in body
    return body.replace(good, f'"{key}": {first}, {good}').encode()


def _many(count: int, what: str) -> Send:
    if what == "inputs":
        extra = [_entry(f"x{i}", "FP64", [1, 1], [1.0]) for i in range(count)]
        return _raw(json.dumps({"inputs": json_body()["inputs"] + extra}).encode())
    return _with(parameters={f"p{i}": i for i in range(count)})


def http_json_attacks() -> list[Attack]:
    text, numeric, categorical = "dialogue", "numeric_features", "categorical_features"
    attacks = []
    add = lambda name, send, expect, **kw: attacks.append(Attack(name, "http-json", send, expect, **kw))  # noqa: E731
    for name in (text, numeric, categorical):
        add(f"missing {name}", _json(**{name: None}), name)
    add("unknown extra input", _json(bogus=_entry("bogus", "FP64", [1, 1], [1.0])), "bogus")
    for name, datatype, data in ((text, "FP64", [1.0]), (text, "INT64", [1]), (numeric, "FP32", [1.0] * 5),
                                 (numeric, "INT64", [1] * 5), (numeric, "BYTES", ["1"] * 5),
                                 (categorical, "FP64", [1.0] * 3), (categorical, "BOOL", [True] * 3)):
        width = len(data)
        add(f"{name} as {datatype}", _json(**{name: _entry(name, datatype, [1, width], data)}), name)
    for name, shape, data in ((text, [1, 2], ["a", "b"]), (numeric, [1, 4], [1.0] * 4), (numeric, [1, 6], [1.0] * 6),
                              (categorical, [1, 2], ["a", "b"]), (numeric, [5], [1.0] * 5),
                              (numeric, [1, 1, 5], [1.0] * 5), (text, [2, 1], ["a", "b"])):
        add(f"{name} shape {shape}", _json(**{name: _entry(name, "BYTES" if name != numeric else "FP64", shape,
                                                            data)}), name)
    add("batch of 65 > max 64", _json(**{n: _entry(n, "BYTES" if n != numeric else "FP64", [65, w], v * 65)
                                         for n, w, v in ((text, 1, ["a"]), (numeric, 5, [1.0] * 5),
                                                         (categorical, 3, ["a", "b", "c"]))}), "batch")
    add("empty batch", _json(**{n: _entry(n, "BYTES" if n != numeric else "FP64", [0, w], [])
                                for n, w in ((text, 1), (numeric, 5), (categorical, 3))}), "batch",
        direct=categorical)
    add("4 values for shape [1, 5]", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [1.0] * 4)), "shape")
    add("6 values for shape [1, 5]", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [1.0] * 6)), "shape")
    add("null in numeric data", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [None] * 5)), "data")
    add("null as text", _json(dialogue=_entry(text, "BYTES", [1, 1], [None])), "data")
    add("string in numeric data", _json(numeric_features=_entry(numeric, "FP64", [1, 5], ["1"] * 5)), "data")
    add("object in data", _json(dialogue=_entry(text, "BYTES", [1, 1], [{"a": 1}])), "data")
    add("number as category", _json(categorical_features=_entry(categorical, "BYTES", [1, 3], [1, 2, 3])), "data")
    add("huge declared shape", _json(numeric_features=_entry(numeric, "FP64", [1, HUGE], [1.0])), numeric,
        direct=SKIP)
    add("huge declared BYTES shape", _json(dialogue=_entry(text, "BYTES", [1, 1 << 34], ["a"])), text, direct=SKIP)
    add("negative dimension", _json(numeric_features=_entry(numeric, "FP64", [1, -5], [1.0] * 5)), numeric)
    add("fractional dimension", _json(numeric_features=_entry(numeric, "FP64", [1, 2.5], [1.0] * 5)), "shape")
    add("shape as a string", _json(numeric_features=_entry(numeric, "FP64", "1,5", [1.0] * 5)), "shape")
    add("deeply nested data", _raw(b'{"inputs":[{"name":"dialogue","shape":[1,1],"datatype":"BYTES","data":'
                                   + b"[" * 200_000 + b"]" * 200_000 + b"}]}"), "JSON", direct=SKIP)
    # parser differentials: Triton 2.51 reads the first of duplicated keys, most parsers the last
    add("duplicated shape key, huge first", _raw(_duplicate_key_body(f"[1, {HUGE}]")), "shape", direct=SKIP)
    add("escaped duplicate key sh\\u0061pe", _raw(_duplicate_key_body(f"[1, {HUGE}]", key="sh\\u0061pe")),
        "shape", direct=SKIP)
    add("duplicated inputs array, huge first", _raw(
        json.dumps(json_body()).replace('{"inputs": ', '{"inputs": [{"name": "numeric_features", "shape": '
                                        f'[1, {HUGE}], "datatype": "FP64", "data": [1.0]}}], "inputs": ', 1).encode()),
        "inputs", direct=SKIP)
    for label, value in (("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e308", "1e308"),
                         ("-3.5e38", "-3.5e38")):
        add(f"{label} as a numeric", _json_text(lambda body, v=value: body.replace("2.0", v, 1)), numeric)
    for label, value in (("NaN", "NaN"), ("3.4e38", "3.4e38"), ("subnormal 1e-320", "1e-320"), ("-0.0", "-0.0")):
        add(f"{label} as a numeric", _json_text(lambda body, v=value: body.replace("2.0", v, 1)), DEFAULT)
    add("invalid UTF-8 text", _raw(json.dumps(json_body()).encode().replace(b"hello", b"\xff\xfe")), text)
    add("lone surrogate escape in text", _json_text(lambda b: b.replace("hello", "\\ud800")), text)
    add("invalid UTF-8 category", _raw(json.dumps(json_body()).encode().replace(b'"card"', b'"\xc3\x28"')),
        categorical)
    add("1 MB category", _record(categorical_features=["x" * (1 << 20), "US", "toys"]), categorical)
    for label, value in (("4 MB text", "x" * (4 << 20)), ("NUL bytes in text", "a\x00b\x00"),
                         ("private-use separator U+E000", "a\ue000b\ue000c"), ("U+FFFF and U+FEFF", "\uffff\ufeff"),
                         ("right-to-left and control characters", "\u202ebuyer\u0007\u001b[31m"),
                         ("HTML bomb", "<" * 100_000), ("emoji only", "😀" * 5000), ("whitespace only", " \n\t" * 100),
                         ("empty text", ""), ("100000 lines", "a\n" * 100_000), ("script tags", "<script>x</script>")):
        add(label, _record(dialogue=[value]), DEFAULT)
    for label, value in (("empty category", ""), ("unseen category", "never-seen"), ("category with NUL", "ca\x00rd")):
        add(label, _record(categorical_features=[value, "US", "toys"]), DEFAULT)
    add("body is not JSON", _raw(b"hello"), "JSON")
    add("JSON array body", _raw(b"[1, 2, 3]"), "JSON")
    add("inputs is not a list", _raw(b'{"inputs": {"name": "x"}}'), "inputs")
    add("empty JSON object", _raw(b"{}"), "inputs")
    add("unknown output requested", _with(outputs=[{"name": "nope"}]), "nope")
    add("classification beyond the classes", _with(outputs=[
        {"name": "abuse_calibrated", "parameters": {"classification": 1 << 30}}]), "classification", direct=DEFAULT)
    # a classification parameter on a BYTES output kills Triton 2.51 (SIGFPE)
    for output in ("abuse_label", "calibration_version"):
        add(f"classification on BYTES output {output}", _with(outputs=[
            {"name": output, "parameters": {"classification": 3}}]), "classification", direct=SKIP)
    add("1 MB request id", _with(id="i" * (1 << 20)), "id", direct=DEFAULT)
    add("parameters of the wrong type", _with(parameters={"sequence_id": [1]}), "sequence_id")
    add("priority 2^63", _with(parameters={"priority": 1 << 63}), "priority", direct=DEFAULT)
    add("custom request parameter", _with(parameters={"anything": "x"}), "anything", direct=DEFAULT)
    add("10,000 inputs", _many(10_000, "inputs"), "x0")
    add("50,000 request parameters", _many(50_000, "parameters"), "parameter", direct=DEFAULT, slows_triton=True)
    add("input named dialogue\\u0000", _raw(json.dumps({"inputs": json_body()["inputs"] + [
        _entry("dialogue\x00", "BYTES", [1, 1], ["x"])]}).encode()), "dialogue")
    add("input given twice", _raw(json.dumps({"inputs": json_body()["inputs"] * 2}).encode()), "dialogue")
    add("output requested twice", _with(outputs=[{"name": "abuse_raw"}, {"name": "abuse_raw"}]), "abuse_raw",
        direct=DEFAULT)
    add("unknown top-level field", _with(sneaky={"a": 1}), "sneaky", direct=DEFAULT)
    add("unknown field in an input", _json(dialogue={**_entry(text, "BYTES", [1, 1], ["hi"]), "contents": [1]}),
        "contents", direct=DEFAULT)
    add("shared-memory parameter on an output", _with(outputs=[
        {"name": "abuse_raw", "parameters": {"shared_memory_region": "/dev/shm/x"}}]), "shared_memory_region")
    add("JSON data beside binary_data_size", _json(dialogue={**_entry(text, "BYTES", [1, 1], ["hi"]),
                                                             "parameters": {"binary_data_size": 0}}),
        "binary_data_size", direct=DEFAULT)
    add("text/plain content type", _raw(json.dumps(json_body()).encode(), {"Content-Type": "text/plain"}), DEFAULT)
    add("gzip-compressed good body", _raw(gzip.compress(json.dumps(json_body()).encode()),
                                          {"Content-Encoding": "gzip"}), DEFAULT)
    add("gzip body that inflates to 1 GB", _lazy(_gzip_bomb, {"Content-Encoding": "gzip"}), "decompresses",
        direct=SKIP)
    add("unknown Content-Encoding", _raw(json.dumps(json_body()).encode(), {"Content-Encoding": "br"}),
        "Content-Encoding")
    add("body of 17 MB", _record(dialogue=["x" * (17 << 20)]), "larger than", direct=DEFAULT)
    return attacks


# -- HTTP binary tensors ----------------------------------------------------------------

def _binary(text_blob: bytes, text_size: int | None = None, header_length: str | None = None,
            numeric: bytes | None = None) -> Send:
    numbers = numeric if numeric is not None else np.ones((1, 5)).tobytes()
    cats = b"".join(bytes_element(v) for v in (b"card", b"US", b"toys"))
    header = {"inputs": [
        {"name": "dialogue", "shape": [1, 1], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(text_blob) if text_size is None else text_size}},
        {"name": "numeric_features", "shape": [1, 5], "datatype": "FP64",
         "parameters": {"binary_data_size": len(numbers)}},
        {"name": "categorical_features", "shape": [1, 3], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(cats)}}]}
    encoded = json.dumps(header).encode()
    return _raw(encoded + text_blob + numbers + cats, {HEADER_LENGTH: header_length or str(len(encoded)),
                                                       "Content-Type": "application/octet-stream"})


def http_binary_attacks() -> list[Attack]:
    ok = bytes_element(b"buyer: hello")
    return [Attack(name, "http-binary", send, expect) for name, send, expect in (
        ("length prefix claims 2 GiB", _binary(b"\xff\xff\xff\x7f" + b"hello"), "dialogue"),
        ("length prefix claims 4 GiB", _binary(b"\xff\xff\xff\xff" + b"hello"), "dialogue"),
        ("two elements for one", _binary(ok + ok), "dialogue"),
        ("length prefix cut short", _binary(b"\x05\x00"), "dialogue"),
        ("non-UTF-8 text", _binary(bytes_element(b"\xff\xfe")), "dialogue"),
        ("binary_data_size beyond the body", _binary(ok, text_size=1 << 30), "dialogue"),
        ("negative binary_data_size", _binary(ok, text_size=-5), "binary_data_size"),
        ("header length beyond the body", _binary(ok, header_length="99999999"), HEADER_LENGTH),
        ("header length not a number", _binary(ok, header_length="abc"), HEADER_LENGTH),
        ("FP64 bytes three short", _binary(ok, numeric=np.ones((1, 5)).tobytes()[:-3]), "numeric_features"),
        ("NaN bits in FP64", _binary(ok, numeric=np.full((1, 5), np.nan).tobytes()), DEFAULT),
        ("inf bits in FP64", _binary(ok, numeric=np.full((1, 5), np.inf).tobytes()), "numeric_features"),
        ("float32 overflow bits", _binary(ok, numeric=np.full((1, 5), 1e300).tobytes()), "numeric_features"),
    )]


# -- gRPC, raw protobuf ---------------------------------------------------------------------

def _grpc_request(model: str = ENSEMBLE, **overrides: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensors = {
        "dialogue": ("BYTES", [1, 1], bytes_element(b"buyer: hello")),
        "numeric_features": ("FP64", [1, 5], np.ones((1, 5)).tobytes()),
        "categorical_features": ("BYTES", [1, 3], b"".join(bytes_element(v) for v in (b"card", b"US", b"toys"))),
    }
    for name, value in overrides.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    for name, (datatype, shape, raw) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


def _grpc(request_factory: Callable[[], service_pb2.ModelInferRequest | bytes], compress: bool = False,
          metadata: tuple = (), method: str = "ModelInfer") -> Send:
    def send(target: Target) -> tuple[Any, str]:
        assert target.grpc_url is not None
        request = request_factory()
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        options = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
        with grpc.insecure_channel(target.grpc_url, options=options) as channel:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            try:
                call(payload, timeout=TIMEOUT_S, metadata=metadata or None,
                     compression=grpc.Compression.Gzip if compress else None)
                return "OK", ""
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return "TIMEOUT", ""
                return str(error.code()), error.details() or ""
    return send


def grpc_attacks() -> list[Attack]:
    def contents_beside_raw() -> service_pb2.ModelInferRequest:
        request = _grpc_request()
        request.inputs[0].contents.bytes_contents.append(b"extra")
        return request

    def bytes_contents_invalid_utf8() -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=ENSEMBLE)
        request.inputs.add(name="dialogue", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"\xff")
        request.inputs.add(name="numeric_features", datatype="FP64", shape=[1, 5]).contents.fp64_contents.extend(
            [1.0] * 5)
        request.inputs.add(name="categorical_features", datatype="BYTES", shape=[1, 3]).contents.bytes_contents.extend(
            [b"card", b"US", b"toys"])
        return request

    def with_parameter(where: str, key: str, kind: str, value: Any) -> Callable[[], service_pb2.ModelInferRequest]:
        def make() -> service_pb2.ModelInferRequest:
            request = _grpc_request()
            target = {"request": request, "input": request.inputs[0],
                      "output": request.outputs.add(name="abuse_raw")}[where]
            setattr(target.parameters[key], kind, value)
            return request
        return make

    def classification_on(output: str) -> service_pb2.ModelInferRequest:
        request = _grpc_request()
        request.outputs.add(name=output).parameters["classification"].int64_param = 3
        return request

    def fp64_for_text() -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=ENSEMBLE)
        request.inputs.add(name="dialogue", datatype="BYTES", shape=[1, 1]).contents.fp64_contents.append(1.0)
        request.inputs.add(name="numeric_features", datatype="FP64", shape=[1, 5]).contents.fp64_contents.extend(
            [1.0] * 5)
        request.inputs.add(name="categorical_features", datatype="BYTES", shape=[1, 3]).contents.bytes_contents.extend(
            [b"card", b"US", b"toys"])
        return request

    def unknown_field() -> bytes:  # field 99, varint 1: not in the message definition
        return _grpc_request().SerializeToString() + bytes([99 << 3 & 0x7F | 0x80, 99 >> 4, 1])

    def bomb() -> service_pb2.ModelInferRequest:  # 64 MB of zeros that gzip squeezes to about 64 KB
        return _grpc_request(dialogue=("BYTES", [1, 1], bytes_element(b"\0" * (64 << 20))))

    add = []
    for name, factory, expect, direct in (
        ("length prefix claims 2 GiB", lambda: _grpc_request(dialogue=("BYTES", [1, 1], b"\xff\xff\xff\x7fhello")),
         "dialogue", None),
        ("non-UTF-8 text", lambda: _grpc_request(dialogue=("BYTES", [1, 1], bytes_element(b"\xc3\x28"))),
         "dialogue", None),
        ("non-UTF-8 in bytes_contents", bytes_contents_invalid_utf8, "dialogue", None),
        ("huge declared shape", lambda: _grpc_request(numeric_features=("FP64", [1, 1 << 40], b"\0" * 8)),
         "numeric_features", None),
        ("raw size mismatch", lambda: _grpc_request(numeric_features=("FP64", [1, 5], b"\0" * 7)),
         "numeric_features", None),
        ("contents beside raw contents", contents_beside_raw, "raw", None),
        ("wrong datatype", lambda: _grpc_request(numeric_features=("FP32", [1, 5], b"\0" * 20)),
         "numeric_features", None),
        ("missing input", lambda: _grpc_request(categorical_features=None), "categorical_features", None),
        ("unknown model", lambda: _grpc_request(model="no_such_model"), "no_such_model", None),
        ("inf in FP64", lambda: _grpc_request(numeric_features=("FP64", [1, 5], np.full((1, 5), np.inf).tobytes())),
         "numeric_features", None),
        ("empty request", lambda: service_pb2.ModelInferRequest(model_name=ENSEMBLE), "inputs", None),
        ("classification on BYTES output calibration_version", lambda: classification_on("calibration_version"),
         "classification", SKIP),
        ("classification on BYTES output abuse_label", lambda: classification_on("abuse_label"),
         "classification", SKIP),
        ("request parameter priority 2^63", with_parameter("request", "priority", "uint64_param", 1 << 63),
         "priority", DEFAULT),
        ("custom request parameter", with_parameter("request", "anything", "string_param", "x"), "anything",
         DEFAULT),
        ("shared-memory parameter on an input", with_parameter("input", "shared_memory_region", "string_param", "x"),
         "shared_memory_region", None),
        ("binary_data parameter on an output", with_parameter("output", "binary_data", "bool_param", True),
         "binary_data", DEFAULT),
        ("fp64_contents for a BYTES input", fp64_for_text, "dialogue", None),
        ("unknown protobuf field", unknown_field, DEFAULT, None),
    ):
        add.append(Attack(name, "grpc", _grpc(factory), expect, direct=direct))
    add.append(Attack("gzip message that inflates to 64 MB", "grpc", _grpc(bomb, compress=True), "larger than",
                      direct=SKIP))
    add.append(Attack("message of 20 MB", "grpc", _grpc(lambda: _grpc_request(
        dialogue=("BYTES", [1, 1], bytes_element(b"x" * (20 << 20))))), "larger than", direct=DEFAULT))
    return add


# -- calling the ensemble's steps directly ------------------------------------------------

def step_attacks() -> list[Attack]:
    def model_inputs(ids: Any = 101, mask: Any = 1, tabular: Any = 0.5) -> list[dict]:
        shape = [1, 2, 64]
        return [_entry("dialogue_input_ids__0", "INT64", shape, [ids] * 128),
                _entry("dialogue_attention_mask__1", "INT64", shape, [mask] * 128),
                _entry("tabular__2", "FP32", [1, 8], [tabular] * 8)]

    def step(model: str, inputs: list[dict]) -> Callable[[Target], tuple[Any, str]]:
        return _raw(json.dumps({"inputs": inputs}).encode(), model=model)

    probabilities = lambda values: [_entry("probabilities", "FP32", [1, 6], values)]  # noqa: E731
    return [Attack(name, "step", send, expect) for name, send, expect in (
        ("preprocessor: invalid UTF-8", _raw(json.dumps(json_body()).encode().replace(b"hello", b"\xff"),
                                             model="preprocessor"), "dialogue"),
        ("model: token id beyond the vocabulary", step("multimodal_model", model_inputs(ids=10 ** 9)),
         "input_ids"),
        ("model: negative token id", step("multimodal_model", model_inputs(ids=-1)), "input_ids"),
        ("model: attention mask of 7", step("multimodal_model", model_inputs(mask=7)), "attention_mask"),
        ("model: NaN features", step("multimodal_model", model_inputs(tabular="NaN")), "tabular"),
        ("calibrator: NaN probabilities", _raw(json.dumps({"inputs": probabilities(["NaN"] * 6)}).encode(),
                                               model="calibrator"), "probabilities"),
        ("calibrator: probability 7", step("calibrator", probabilities([7.0] * 6)), "probabilities"),
        ("calibrator: negative probability", step("calibrator", probabilities([-1.0] * 6)), "probabilities"),
        ("calibrator: wrong width", step("calibrator", [_entry("probabilities", "FP32", [1, 5], [0.2] * 5)]),
         "probabilities"),
    )]


# -- administrative calls and model loading without the key ---------------------------------

EVIL_MODEL_PY = """
import pathlib
pathlib.Path({marker!r}).write_text("the caller's code ran on the server")
class TritonPythonModel:
    def execute(self, requests):
        return []
"""
EVIL_CONFIG = 'name: "evil" backend: "python" max_batch_size: 0 input [{name: "x" data_type: TYPE_FP32 dims: [1]}] ' \
              'output [{name: "y" data_type: TYPE_FP32 dims: [1]}]'


def _evil_model(root: Path, marker: Path) -> Path:
    """A model directory whose code writes ``marker`` when Triton loads it."""
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_text(EVIL_CONFIG, encoding="utf-8")
    (root / "1" / "model.py").write_text(EVIL_MODEL_PY.format(marker=str(marker)), encoding="utf-8")
    return root


def _loaded(target: Target, marker: Path) -> bool:
    if marker.exists():
        return True
    try:
        with urllib.request.urlopen(f"http://{target.triton_http}/v2/models/evil/ready", timeout=10) as answer:
            return answer.status == 200
    except OSError:
        return False


def _load_attempt(path: str, headers: dict | None = None, sagemaker: bool = False) -> Send:
    def send(target: Target) -> tuple[Any, str]:
        marker = target.marker_dir / f"pwned-{uuid.uuid4().hex}"
        if sagemaker:  # SageMaker's multi-model API: load a model directory from a path
            body = {"model_name": "evil", "url": str(_evil_model(target.marker_dir / uuid.uuid4().hex, marker))}
        else:
            source = EVIL_MODEL_PY.format(marker=str(marker)).encode()
            body = {"parameters": {"config": EVIL_CONFIG, "file:1/model.py": base64.b64encode(source).decode()}}
        status, answer = post(target.http_url, json.dumps(body).encode(), headers=headers, path=path,
                              timeout=TIMEOUT_S)
        if _loaded(target, marker):
            return "LOADED", f"{path} answered {status} and the model was loaded"
        return status, answer.decode(errors="replace")
    return send


def _post(path: str, body: bytes = b"{}") -> Send:
    def send(target: Target) -> tuple[Any, str]:
        status, answer = post(target.http_url, body, path=path, timeout=TIMEOUT_S)
        return status, answer.decode(errors="replace")
    return send


def admin_attacks() -> list[Attack]:
    key = "tce-admin-key"
    attacks = [Attack(name, "admin", send, expect) for name, send, expect in (
        ("SageMaker model load: POST /models", _load_attempt("/models", sagemaker=True), "not served"),
        ("model load without the admin key", _load_attempt("/v2/repository/models/evil/load"), key),
        ("model load with a wrong admin key", _load_attempt("/v2/repository/models/evil/load",
                                                            {key: "wrong-key-of-some-length"}), key),
        ("unload the ensemble without the key", _post("/v2/repository/models/calibrated_ensemble/unload"), key),
    )]
    grpc_load = service_pb2.RepositoryModelLoadRequest(model_name="evil")
    grpc_load.parameters["config"].string_param = EVIL_CONFIG
    attacks.append(Attack("gRPC model load without the admin key", "grpc",
                          _grpc(lambda: grpc_load.SerializeToString(), method="RepositoryModelLoad"), key))
    return attacks


def catalogue() -> list[Attack]:
    return [*http_json_attacks(), *http_binary_attacks(), *grpc_attacks(), *step_attacks(), *admin_attacks()]


# -- running and judging ----------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    attack: Attack
    verdict: str
    detail: str


CLEAR_STATUSES = (400, 403, 404, 405, 413, 415, "StatusCode.INVALID_ARGUMENT", "StatusCode.RESOURCE_EXHAUSTED",
                  "StatusCode.PERMISSION_DENIED", "StatusCode.NOT_FOUND", "StatusCode.UNIMPLEMENTED")


def _judge(attack: Attack, route: str, status: Any, message: str) -> tuple[str, str]:
    if status == "LOADED":
        return LOADED, message
    if status in ("EXC",) or "Connection refused" in message or "Connection reset" in message:
        return CRASH, message[:200]
    if status == "TIMEOUT":
        return HANG, "no answer"
    expect = attack.expected(route)
    answered = status in (200, "OK")
    if expect == DEFAULT:
        return (DEFAULT, "") if answered else (UNCLEAR, f"{status}: {message[:200]}")
    if answered:
        return UNCLEAR, f"accepted (expected an error naming {expect!r})"
    not_served = status == 404 and "not served by the gateway" in message
    named = expect.lower() in message.lower() or not_served
    return (CLEAR if status in CLEAR_STATUSES and named else UNCLEAR), f"{status}: {message[:200]}"


def _good(target: Target) -> tuple[Any, bytes, float]:
    started = time.monotonic()
    status, body = post(target.http_url, json.dumps(json_body()).encode(), path=target.infer_path(),
                        timeout=TIMEOUT_S)
    return status, body, time.monotonic() - started


def run(target: Target, attacks: list[Attack], alive: Callable[[], bool], neighbours: int = 3) -> list[Outcome]:
    """Each attack that applies to the route beside ``neighbours`` good requests;
    ``alive`` says whether the server survived."""
    status, body, _ = _good(target)
    if status != 200:
        raise RuntimeError(f"the server does not answer a good request: {status} {body[:200]!r}")
    reference = abuse_score(body)
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(1 + neighbours) as pool:
        for attack in (a for a in attacks if a.applies(target)):
            bad = pool.submit(attack.send, target)
            goods = [pool.submit(_good, target) for _ in range(neighbours)]
            try:
                status, message = bad.result(timeout=TIMEOUT_S + 30)
            except concurrent.futures.TimeoutError:
                status, message = "TIMEOUT", ""
            verdict, detail = _judge(attack, target.route, status, message)
            harmed = _harmed(goods, reference, slow_ok=attack.slows_triton and target.route == "direct")
            if not alive():
                verdict, detail = CRASH, "the server died"
            elif harmed and verdict not in (CRASH, HANG, LOADED):
                verdict, detail = HARMED, harmed[0]
            outcomes.append(Outcome(attack, verdict, detail))
            if verdict == CRASH:
                break
    return outcomes


def _harmed(goods: list[concurrent.futures.Future], reference: list[float], slow_ok: bool = False) -> list[str]:
    harmed = []
    for future in goods:
        try:
            good_status, good_body, seconds = future.result(timeout=TIMEOUT_S + 30)
        except concurrent.futures.TimeoutError:
            harmed.append("timeout")
            continue
        if good_status != 200 or not np.allclose(abuse_score(good_body), reference, atol=1e-6):
            harmed.append(f"{good_status}: {good_body[:120]!r}")
        elif seconds > SLOW_NEIGHBOUR_S and not slow_ok:
            harmed.append(f"a good request beside it waited {seconds:.1f} s")
    return harmed


COLUMNS = (CLEAR, DEFAULT, UNCLEAR, CRASH, HANG, HARMED, LOADED)


def table(outcomes: list[Outcome], route: str = "") -> str:
    by_channel: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        by_channel[outcome.attack.channel][outcome.verdict] += 1
    lines = [f"{'route':<10} {'channel':<12} {'kinds':>5} " + " ".join(f"{c:>13}" for c in COLUMNS)]
    total: collections.Counter = collections.Counter()
    for channel, counts in by_channel.items():
        total.update(counts)
        lines.append(f"{route:<10} {channel:<12} {sum(counts.values()):>5} "
                     + " ".join(f"{counts[c]:>13}" for c in COLUMNS))
    lines.append(f"{route:<10} {'all':<12} {sum(total.values()):>5} " + " ".join(f"{total[c]:>13}" for c in COLUMNS))
    odd = [o for o in outcomes if o.verdict not in (CLEAR, DEFAULT)]
    lines += [f"  {o.verdict}: [{o.attack.channel}] {o.attack.name}: {o.detail}" for o in odd]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
    from tce_gateway.launcher import Gateway

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--route", choices=ROUTES, action="append", help="routes to attack (default: all)")
    args = parser.parse_args(argv)
    config = ServerConfig(args.repository, *free_ports(), model_control_mode="explicit", load_models=("*",))
    results = []
    with EmbeddedServer(config) as server, tempfile.TemporaryDirectory() as scratch:
        alive = lambda: server.process is not None and server.process.poll() is None  # noqa: E731
        http, grpc_port, sagemaker = free_ports(3)
        with Gateway.for_server(config.http_url, config.grpc_url, http_port=http, grpc_port=grpc_port,
                                sagemaker_port=sagemaker):
            for route in args.route or ROUTES:
                target = {"gateway": Target("gateway", f"127.0.0.1:{http}", f"127.0.0.1:{grpc_port}",
                                            config.http_url, Path(scratch)),
                          "sagemaker": Target("sagemaker", f"127.0.0.1:{sagemaker}", None, config.http_url,
                                              Path(scratch)),
                          "direct": Target("direct", config.http_url, config.grpc_url, config.http_url,
                                           Path(scratch))}[route]
                outcomes = run(target, catalogue(), alive)
                results += outcomes
                print(table(outcomes, route), flush=True)
    return 0 if all(o.verdict in (CLEAR, DEFAULT) for o in results) else 1


if __name__ == "__main__":
    sys.exit(main())
