"""The attack table: kinds of bad input a careless or hostile caller can send, each
sent beside good requests to a real server, and what came of it.

Outcomes:
    clear error     HTTP 400 / gRPC INVALID_ARGUMENT (or a gateway refusal) naming the field at fault
    unclear error   refused, but with the wrong status or without naming the field
    default         answered, with the documented default (empty text, NaN, unseen category, ...)
    crash           the server process died
    hang            no answer within the time limit
    harmed          a good request sent beside it failed or got another answer

    .venv/bin/python -m tests.attacks --repository model_repository [--gateway]

prints the table (the demo schema: one text field, 5 numerics, 3 categoricals);
``tests/integration/test_attack_table.py`` asserts it in ``make test``.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.hostile import ENSEMBLE, GOOD_RECORD, abuse_score, bytes_element, json_body, post, post_json

CLEAR, UNCLEAR, DEFAULT, CRASH, HANG, HARMED = ("clear error", "unclear error", "default", "crash", "hang",
                                                "harmed")
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Attack:
    name: str
    channel: str                     # http-json | http-binary | grpc | step
    send: Callable[["Target"], tuple[Any, str]]   # -> (status, message or body text)
    expect: str                      # a field name the error must carry, or DEFAULT
    needs_gateway: bool = False      # crashes Triton 2.51 itself when sent to it directly


@dataclass(frozen=True)
class Target:
    http_url: str
    grpc_url: str


# -- HTTP JSON -------------------------------------------------------------------------

def _entry(name: str, datatype: str, shape: list, data: Any) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _json(**overrides: Any) -> Callable[[Target], tuple[Any, str]]:
    """A one-record JSON request with inputs replaced (``None`` drops one)."""
    def send(target: Target) -> tuple[Any, str]:
        body = json_body()
        named = {i["name"]: i for i in body["inputs"]}
        for name, entry in overrides.items():
            if entry is None:
                named.pop(name, None)
            else:
                named[name] = entry
        status, answer = post_json(target.http_url, {"inputs": list(named.values())}, timeout=TIMEOUT_S)
        return status, answer.decode(errors="replace")
    return send


def _raw(body: bytes, headers: dict | None = None, model: str = ENSEMBLE) -> Callable[[Target], tuple[Any, str]]:
    def send(target: Target) -> tuple[Any, str]:
        status, answer = post(target.http_url, body, headers=headers, path=f"/v2/models/{model}/infer",
                              timeout=TIMEOUT_S)
        return status, answer.decode(errors="replace")
    return send


def _json_text(transform: Callable[[str], str]) -> Callable[[Target], tuple[Any, str]]:
    return _raw(transform(json.dumps(json_body())).encode())


def _record(**values: Any) -> Callable[[Target], tuple[Any, str]]:
    record = {**GOOD_RECORD, **values}
    return _json(**{k: _entry(k, "BYTES" if k != "numeric_features" else "FP64", [1, len(v)], v)
                    for k, v in record.items()})


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
                                for n, w in ((text, 1), (numeric, 5), (categorical, 3))}), categorical)
    add("4 values for shape [1, 5]", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [1.0] * 4)), "shape")
    add("6 values for shape [1, 5]", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [1.0] * 6)), "shape")
    add("null in numeric data", _json(numeric_features=_entry(numeric, "FP64", [1, 5], [None] * 5)), "data")
    add("null as text", _json(dialogue=_entry(text, "BYTES", [1, 1], [None])), "data")
    add("string in numeric data", _json(numeric_features=_entry(numeric, "FP64", [1, 5], ["1"] * 5)), "data")
    add("object in data", _json(dialogue=_entry(text, "BYTES", [1, 1], [{"a": 1}])), "data")
    add("number as category", _json(categorical_features=_entry(categorical, "BYTES", [1, 3], [1, 2, 3])), "data")
    add("huge declared shape", _json(numeric_features=_entry(numeric, "FP64", [1, 1099511627776], [1.0])),
        numeric, needs_gateway=True)
    add("huge declared BYTES shape", _json(dialogue=_entry(text, "BYTES", [1, 1 << 34], ["a"])), text,
        needs_gateway=True)
    add("negative dimension", _json(numeric_features=_entry(numeric, "FP64", [1, -5], [1.0] * 5)), numeric)
    add("fractional dimension", _json(numeric_features=_entry(numeric, "FP64", [1, 2.5], [1.0] * 5)), "shape")
    add("shape as a string", _json(numeric_features=_entry(numeric, "FP64", "1,5", [1.0] * 5)), "shape")
    add("deeply nested data", _raw(b'{"inputs":[{"name":"dialogue","shape":[1,1],"datatype":"BYTES","data":'
                                   + b"[" * 200_000 + b"]" * 200_000 + b"}]}"), "JSON", needs_gateway=True)
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
    add("unknown output requested", _raw(json.dumps({**json_body(), "outputs": [{"name": "nope"}]}).encode()),
        "nope")
    add("classification on an output", _raw(json.dumps({**json_body(), "outputs": [
        {"name": "abuse_calibrated", "parameters": {"classification": 1 << 30}}]}).encode()), DEFAULT)
    add("1 MB request id", _raw(json.dumps({**json_body(), "id": "i" * (1 << 20)}).encode()), DEFAULT)
    add("parameters of the wrong type", _raw(json.dumps({**json_body(), "parameters": {"sequence_id": [1]}}).encode()),
        "sequence_id")
    add("text/plain content type", _raw(json.dumps(json_body()).encode(), {"Content-Type": "text/plain"}), DEFAULT)
    return attacks


# -- HTTP binary tensors ----------------------------------------------------------------

def _binary(text_blob: bytes, text_size: int | None = None, header_length: str | None = None,
            numeric: bytes | None = None) -> Callable[[Target], tuple[Any, str]]:
    def send(target: Target) -> tuple[Any, str]:
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
        status, answer = post(target.http_url, encoded + text_blob + numbers + cats, timeout=TIMEOUT_S,
                              headers={"Inference-Header-Content-Length": header_length or str(len(encoded)),
                                       "Content-Type": "application/octet-stream"})
        return status, answer.decode(errors="replace")
    return send


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
        ("header length beyond the body", _binary(ok, header_length="99999999"), "Inference-Header-Content-Length"),
        ("header length not a number", _binary(ok, header_length="abc"), "Inference-Header-Content-Length"),
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


def _grpc(request_factory: Callable[[], service_pb2.ModelInferRequest]) -> Callable[[Target], tuple[Any, str]]:
    def send(target: Target) -> tuple[Any, str]:
        with grpc.insecure_channel(target.grpc_url, options=[("grpc.max_send_message_length", 1 << 30)]) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request_factory(), timeout=TIMEOUT_S)
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

    return [Attack(name, "grpc", _grpc(factory), expect) for name, factory, expect in (
        ("length prefix claims 2 GiB", lambda: _grpc_request(dialogue=("BYTES", [1, 1], b"\xff\xff\xff\x7fhello")),
         "dialogue"),
        ("non-UTF-8 text", lambda: _grpc_request(dialogue=("BYTES", [1, 1], bytes_element(b"\xc3\x28"))),
         "dialogue"),
        ("non-UTF-8 in bytes_contents", bytes_contents_invalid_utf8, "dialogue"),
        ("huge declared shape", lambda: _grpc_request(numeric_features=("FP64", [1, 1 << 40], b"\0" * 8)),
         "numeric_features"),
        ("raw size mismatch", lambda: _grpc_request(numeric_features=("FP64", [1, 5], b"\0" * 7)),
         "numeric_features"),
        ("contents beside raw contents", contents_beside_raw, "raw"),
        ("wrong datatype", lambda: _grpc_request(numeric_features=("FP32", [1, 5], b"\0" * 20)),
         "numeric_features"),
        ("missing input", lambda: _grpc_request(categorical_features=None), "categorical_features"),
        ("unknown model", lambda: _grpc_request(model="no_such_model"), "no_such_model"),
        ("inf in FP64", lambda: _grpc_request(numeric_features=("FP64", [1, 5], np.full((1, 5), np.inf).tobytes())),
         "numeric_features"),
        ("empty request", lambda: service_pb2.ModelInferRequest(model_name=ENSEMBLE), "inputs"),
    )]


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


def catalogue() -> list[Attack]:
    return [*http_json_attacks(), *http_binary_attacks(), *grpc_attacks(), *step_attacks()]


# -- running and judging ----------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    attack: Attack
    verdict: str
    detail: str


def _judge(attack: Attack, status: Any, message: str) -> tuple[str, str]:
    if status in ("EXC",) or "Connection refused" in message or "Connection reset" in message:
        return CRASH, message[:200]
    if status == "TIMEOUT":
        return HANG, "no answer"
    answered = status in (200, "OK")
    if attack.expect == DEFAULT:
        return (DEFAULT, "") if answered else (UNCLEAR, f"{status}: {message[:200]}")
    if answered:
        return UNCLEAR, f"accepted (expected an error naming {attack.expect!r})"
    clear_status = status in (400, 413, "StatusCode.INVALID_ARGUMENT") or \
        (status == 404 and "not served by the gateway" in message) or \
        (status in ("StatusCode.NOT_FOUND", 404) and "unknown model" in message)
    named = attack.expect.lower() in message.lower() or "refused by the gateway" in message
    return (CLEAR if clear_status and named else UNCLEAR), f"{status}: {message[:200]}"


def run(target: Target, attacks: list[Attack], alive: Callable[[], bool], neighbours: int = 3) -> list[Outcome]:
    """Each attack beside ``neighbours`` good requests; ``alive`` says whether the server survived."""
    status, body = post_json(target.http_url, json_body(), timeout=TIMEOUT_S)
    if status != 200:
        raise RuntimeError(f"the server does not answer a good request: {status} {body[:200]!r}")
    reference = abuse_score(body)
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(1 + neighbours) as pool:
        for attack in attacks:
            bad = pool.submit(attack.send, target)
            goods = [pool.submit(post_json, target.http_url, json_body(), timeout=TIMEOUT_S)
                     for _ in range(neighbours)]
            try:
                status, message = bad.result(timeout=TIMEOUT_S + 10)
            except concurrent.futures.TimeoutError:
                status, message = "TIMEOUT", ""
            verdict, detail = _judge(attack, status, message)
            harmed = []
            for future in goods:
                try:
                    good_status, good_body = future.result(timeout=TIMEOUT_S + 10)
                except concurrent.futures.TimeoutError:
                    harmed.append("timeout")
                    continue
                if good_status != 200 or not np.allclose(abuse_score(good_body), reference, atol=1e-6):
                    harmed.append(f"{good_status}: {good_body[:120]!r}")
            if not alive():
                verdict, detail = CRASH, "the server died"
            elif harmed and verdict not in (CRASH, HANG):
                verdict, detail = HARMED, harmed[0]
            outcomes.append(Outcome(attack, verdict, detail))
            if verdict == CRASH:
                break
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    columns = (CLEAR, DEFAULT, UNCLEAR, CRASH, HANG, HARMED)
    by_channel: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        by_channel[outcome.attack.channel][outcome.verdict] += 1
    lines = [f"{'channel':<12} {'kinds':>5} " + " ".join(f"{c:>13}" for c in columns)]
    total: collections.Counter = collections.Counter()
    for channel, counts in by_channel.items():
        total.update(counts)
        lines.append(f"{channel:<12} {sum(counts.values()):>5} " + " ".join(f"{counts[c]:>13}" for c in columns))
    lines.append(f"{'all':<12} {sum(total.values()):>5} " + " ".join(f"{total[c]:>13}" for c in columns))
    odd = [o for o in outcomes if o.verdict not in (CLEAR, DEFAULT)]
    lines += [f"  {o.verdict}: [{o.attack.channel}] {o.attack.name}: {o.detail}" for o in odd]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from tce.serving.gateway import Gateway
    from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--gateway", action="store_true", help="attack through the nginx gateway")
    args = parser.parse_args(argv)
    with EmbeddedServer(ServerConfig(args.repository, *free_ports())) as server:
        alive = lambda: server.process is not None and server.process.poll() is None  # noqa: E731
        attacks = catalogue()
        if args.gateway:
            http, grpc_port = free_ports(2)
            with Gateway(server.config.http_url, server.config.grpc_url, http_port=http, grpc_port=grpc_port):
                outcomes = run(Target(f"127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"), attacks, alive)
        else:
            outcomes = run(Target(server.config.http_url, server.config.grpc_url),
                           [a for a in attacks if not a.needs_gateway], alive)
    print(table(outcomes))
    return 0 if all(o.verdict in (CLEAR, DEFAULT) for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
