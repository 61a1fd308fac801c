"""tce_gateway.invocations: SageMaker's /invocations body read as seed 003's records or as
KServe v2, the canonical request the door builds from it, and seed 000's answer."""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from tce_backends.contract import SCHEMA_PARAMETER
from tce_client.schema import EnsembleSchema, TaskInfo
from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.http_codec import encode_infer
from tce_gateway.invocations import read_invocation, seed_answer
from tce_gateway.signatures import ModelSignature

SCHEMA = EnsembleSchema(
    text_fields=("dialogue",), numeric_features=("order_amount", "prior_claims"), categorical_features=("marketplace",),
    feature_order=("order_amount", "prior_claims", "marketplace"),
    tasks=(TaskInfo("abuse", "binary", ("no", "yes"),
                    {"raw": "abuse_raw", "calibrated": "abuse_calibrated", "label": "abuse_label"}),),
    inputs={"numeric": "numeric_features", "categorical": "categorical_features"},
    outputs={"calibration_version": "calibration_version", "calibration_fallback": "calibration_fallback"})
CONFIG = {"name": "calibrated_ensemble", "max_batch_size": 4,
          "parameters": {SCHEMA_PARAMETER: {"string_value": SCHEMA.to_json()}},
          "input": [{"name": "dialogue", "data_type": "TYPE_STRING", "dims": [1]},
                    {"name": "numeric_features", "data_type": "TYPE_FP64", "dims": [2]},
                    {"name": "categorical_features", "data_type": "TYPE_STRING", "dims": [1]}],
          "output": [{"name": "abuse_raw", "data_type": "TYPE_FP32", "dims": [2]}]}
SIGNATURE = ModelSignature.from_config(CONFIG)
LIMITS = Limits(max_elements=64)
RECORD = {"dialogue": "buyer: hi", "order_amount": None, "prior_claims": 2, "marketplace": "US"}


def read(body: bytes | str, content_type: str = "application/json", accept: str | None = None,
         limits: Limits = LIMITS):
    raw = body.encode() if isinstance(body, str) else body
    return read_invocation(raw, content_type, accept, SIGNATURE, limits)


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_every_seed_format_becomes_the_same_canonical_request():
    bodies = [(json.dumps(RECORD), "application/json"), (json.dumps([RECORD]), None),
              (json.dumps({"instances": [RECORD]}), "text/plain"),
              ("marketplace,dialogue,order_amount,prior_claims\nUS,buyer: hi,,2\n", "text/csv"),
              ("buyer: hi,,2,US\n", "text/csv; charset=utf-8"),
              (npy(np.array([["buyer: hi", "", "2", "US"]])), "application/x-npy")]
    requests = [read(body, kind) for body, kind in bodies]
    assert all(r.schema == SCHEMA and r.response_type == "application/json" for r in requests)
    encoded = [encode_infer(r.request) for r in requests]
    assert all(e == encoded[0] for e in encoded), encoded
    payload, headers = encoded[0]
    header = json.loads(payload[:int(headers["Inference-Header-Content-Length"])])
    assert [(i["name"], i["shape"], i["datatype"]) for i in header["inputs"]] == [
        ("dialogue", [1, 1], "BYTES"), ("numeric_features", [1, 2], "FP64"), ("categorical_features", [1, 1], "BYTES")]
    numbers = np.frombuffer(requests[0].request.inputs[1].raw, "<f8")
    assert np.isnan(numbers[0]) and numbers[1] == 2.0  # null is missing


def test_a_kserve_v2_body_keeps_its_own_reading():
    body = {"inputs": [{"name": "dialogue", "shape": [1, 1], "datatype": "BYTES", "data": ["hi"]},
                       {"name": "numeric_features", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]},
                       {"name": "categorical_features", "shape": [1, 1], "datatype": "BYTES", "data": ["US"]}]}
    invocation = read(json.dumps(body), accept="text/csv")
    assert invocation.schema is None and [t.name for t in invocation.request.inputs] == [
        "dialogue", "numeric_features", "categorical_features"]
    with pytest.raises(Refusal, match="'inputs'"):
        read('{"inputs": {"name": "x"}}')


@pytest.mark.parametrize("body, content_type, accept, status, words", [
    (json.dumps(RECORD), "application/json", "application/xml", 406, ["Accept 'application/xml'", "text/csv"]),
    (json.dumps([RECORD] * 5), "application/json", None, 400, ["5 records", "at most 4"]),
    ("hi,,2,US\n" * 6, "text/csv", None, 400, ["more than 4 records"]),
    (json.dumps([{**RECORD, "prior_claims": "lots"}]), "application/json", None, 400,
     ["record 0", "'prior_claims'", "'lots'"]),
    (json.dumps([RECORD, {**RECORD, "prior_claimz": 1}]), "application/json", None, 400,
     ["prior_claimz", "the model takes dialogue, order_amount"]),
    ("{}", "application/json", None, 400, ["empty JSON object", '"inputs"']),
    ("hello", "application/json", None, 400, ["not valid JSON"]),
    ("[1, 2, 3]", "application/json", None, 400, ["record 0 is a number", "JSON"]),
    ("hi,2\n", "text/csv", None, 400, ["record 0", "2 values", "dialogue, order_amount, prior_claims, marketplace"]),
    (npy(np.array([RECORD], dtype=object), allow_pickle=True), "application/x-npy", None, 400, ["Python objects"]),
    (npy(np.zeros((4, 20))), "application/x-npy", None, 413, ["more than 64 values"]),
    ("[" * 70 + "]" * 70, "application/json", None, 413, ["more JSON arrays and objects than the gateway's 64"]),
])
def test_bad_invocations_are_refused_naming_the_problem(body, content_type, accept, status, words):
    with pytest.raises(Refusal) as caught:
        read(body, content_type, accept)
    assert caught.value.status == status
    assert all(word in caught.value.message for word in words), caught.value.message


def _triton_answer(outputs: list[tuple[str, str, list[int], bytes]]) -> tuple[dict[str, str], bytes]:
    header = json.dumps({"outputs": [{"name": name, "datatype": datatype, "shape": shape,
                                      "parameters": {"binary_data_size": len(raw)}}
                                     for name, datatype, shape, raw in outputs]}).encode()
    return {"Inference-Header-Content-Length": str(len(header))}, header + b"".join(o[3] for o in outputs)


def _text(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_the_answer_is_seed_000s_in_the_type_accept_chose():
    headers, body = _triton_answer([
        ("abuse_raw", "FP32", [2, 2], np.array([[0.25, 0.75], [0.5, 0.5]], "<f4").tobytes()),
        ("abuse_calibrated", "FP32", [2, 2], np.array([[0.5, 0.5], [0.5, 0.5]], "<f4").tobytes()),
        ("abuse_label", "BYTES", [2, 1], _text(b"yes", b"no")),
        ("calibration_version", "BYTES", [2, 1], _text(b"v1", b"v1")),
        ("calibration_fallback", "BOOL", [2, 1], np.array([[False], [True]]).tobytes())])
    invocation = read(json.dumps([RECORD, RECORD]), accept="text/csv")
    assert seed_answer(200, headers, body, invocation.schema, "application/json") == json.dumps({"predictions": [
        {"legacy-score": "0.75", "calibrated-score": "0.5", "output-label": "class-1", "calibration-fallback": "False"},
        {"legacy-score": "0.5", "calibrated-score": "0.5", "output-label": "class-0",
         "calibration-fallback": "True"}]}).encode()
    csv_lines = seed_answer(200, headers, body, invocation.schema, invocation.response_type).decode().splitlines()
    assert csv_lines == ["legacy-score,calibrated-score,output-label,calibration-fallback",
                         "0.75,0.5,class-1,False", "0.5,0.5,class-0,True"]
    with pytest.raises(Refusal, match="Triton refused the request: bad input") as caught:
        seed_answer(400, {}, b'{"error": "bad input"}', invocation.schema, "application/json")
    assert caught.value.status == 400
