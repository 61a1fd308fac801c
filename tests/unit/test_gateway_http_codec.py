"""tce_gateway.http_codec, signatures and tensors: what the door accepts from an HTTP
caller and the request it builds for Triton instead."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tce_gateway.config import Limits
from tce_gateway.errors import Refusal
from tce_gateway.http_codec import HEADER_LENGTH, encode_infer, parse_infer, strict_json
from tce_gateway.signatures import ModelSignature

CONFIG = {"name": "ens", "max_batch_size": 4,
          "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]},
                    {"name": "numbers", "data_type": "TYPE_FP64", "dims": [3]},
                    {"name": "tokens", "data_type": "TYPE_INT64", "dims": [-1], "optional": True}],
          "output": [{"name": "score", "data_type": "TYPE_FP32", "dims": [2]},
                     {"name": "label", "data_type": "TYPE_STRING", "dims": [1]}]}
SIGNATURE = ModelSignature.from_config(CONFIG)
LIMITS = Limits(max_elements=64, max_id_chars=16)


def good(**extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["hé"]},
                       {"name": "numbers", "shape": [1, 3], "datatype": "FP64", "data": [[1, 2.5, float("nan")]]}],
            **extra}


def parse(body: dict | bytes | str, header_length: str | None = None):
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    return parse_infer("ens", "", raw, header_length, SIGNATURE, LIMITS)


def refused(body, match: str, status: int = 400, header_length: str | None = None) -> None:
    with pytest.raises(Refusal, match=match) as caught:
        parse(body, header_length)
    assert caught.value.status == status


def test_a_good_request_becomes_a_canonical_binary_request():
    request = parse(good())  # NaN: the missing numeric, as Triton reads it
    body, headers = encode_infer(request)
    cut = int(headers[HEADER_LENGTH])
    header = json.loads(body[:cut])
    assert header == {"inputs": [
        {"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}},
        {"name": "numbers", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}]}
    assert body[cut:cut + 7] == struct.pack("<I", 3) + "hé".encode()
    numbers = np.frombuffer(body[cut + 7:], dtype="<f8")
    assert numbers[:2].tolist() == [1.0, 2.5] and np.isnan(numbers[2])


def test_binary_inputs_are_checked_and_kept_byte_for_byte():
    framed = struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)
    header = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(framed)}},
                         {"name": "numbers", "shape": [2, 3], "datatype": "FP64", "data": [0] * 6}]}
    encoded = json.dumps(header).encode()
    request = parse(encoded + framed, str(len(encoded)))
    assert request.inputs[0].raw == framed and request.inputs[1].raw == bytes(48)


@pytest.mark.parametrize("text, match", [
    (json.dumps(good()).replace('"shape": [1, 3]', '"shape": [1, 1099511627776], "shape": [1, 3]'),
     'the key "shape" twice'),
    (json.dumps(good()).replace('"shape": [1, 3]', '"sh\\u0061pe": [1, 9], "shape": [1, 3]'),
     'the key "shape" twice'),
    ('{"inputs": [], "inputs": []}', 'the key "inputs" twice'),
    ("[" * 5000 + "]" * 5000, "nested too deeply|more JSON arrays"),
    ("not json", "not valid JSON"),
])
def test_json_that_two_parsers_could_read_differently_is_refused(text, match):
    refused(text, match, status=413 if "more JSON" in match and text.startswith("[[") else 400)


@pytest.mark.parametrize("change, match", [
    ({"sneaky": 1}, 'the field "sneaky"'),
    ({"parameters": {"priority": 1}}, 'parameter "priority" is not accepted'),
    ({"parameters": {"binary_data_output": 1}}, "'binary_data_output' must be a bool"),
    ({"outputs": [{"name": "label", "parameters": {"classification": 1}}]}, "only to numeric outputs"),
    ({"outputs": [{"name": "score", "parameters": {"classification": 3}}]}, "integer in 1..2"),
    ({"outputs": [{"name": "score"}, {"name": "score"}]}, "requested twice"),
    ({"outputs": [{"name": "nope"}]}, "'nope' is not an output"),
    ({"id": "x" * 17}, "'id' must be printable text of at most 16"),
    ({"id": "a\ud800"}, "'id' must be printable"),
    ({"id": "new\nline"}, "'id' must be printable"),
])
def test_fields_and_parameters_off_the_allow_list_are_refused(change, match):
    refused(good(**change), match)


@pytest.mark.parametrize("entry, match, status", [
    ({"name": "numbers", "shape": [1, 1099511627776], "datatype": "FP64", "data": [1]}, "does not match", 400),
    ({"name": "numbers", "shape": [5, 3], "datatype": "FP64", "data": [1] * 15}, "batch dimension 5", 400),
    ({"name": "numbers", "shape": [1, 3], "datatype": "FP32", "data": [1] * 3}, "datatype 'FP32'", 400),
    ({"name": "numbers", "shape": [1, 3], "datatype": "FP64", "data": [1] * 2}, "holds 3 values but data has 2", 400),
    ({"name": "numbers", "shape": [1, 3], "datatype": "FP64", "data": [True] * 3}, "a boolean where", 400),
    ({"name": "numbers", "shape": [1, 3.0], "datatype": "FP64", "data": [1] * 3}, "list of 1 to 8 integers", 400),
    ({"name": "tokens", "shape": [1, 100], "datatype": "INT64", "data": [1] * 100}, "beyond the gateway's 64", 413),
    ({"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2 ** 63]}, "outside the range", 400),
    ({"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2.5]}, "a number where a INT64", 400),
    ({"name": "text\x00", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}, "is not an input", 400),
    ({"name": "numbers", "shape": [1, 3], "datatype": "FP64", "data": [1] * 3, "parameters": {"binary_data_size": 0}},
     "either JSON 'data' or", 400),
])
def test_each_input_is_checked_against_the_models_config(entry, match, status):
    inputs = [i for i in good()["inputs"] if i["name"] != entry["name"]]
    refused({"inputs": [*inputs, entry]}, match, status)


def test_invalid_utf8_text_is_named():
    body = json.dumps(good()).encode()
    assert b'"h\\u00e9"' in body
    refused(body.replace(b'"h\\u00e9"', b'"\xff"'), "input 'text': data element 0 is not valid UTF-8")


def test_missing_and_repeated_inputs_are_named():
    refused({"inputs": good()["inputs"][:1]}, "input 'numbers' is missing")
    refused({"inputs": good()["inputs"] * 2}, "input 'text' is given twice")


@pytest.mark.parametrize("length, match", [("99999", "within the body"), ("²", "positive integer"),
                                            ("0", "positive integer"), ("abc", "positive integer")])
def test_a_bad_header_length_is_refused(length, match):
    refused(good(), match, header_length=length)


def test_bytes_framing_problems_are_named():
    header = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 9}},
                         {"name": "numbers", "shape": [1, 3], "datatype": "FP64", "data": [0, 0, 0]}]}
    for blob, match in ((b"\xff\xff\xff\x7f" + b"hello", "claims 2147483647 bytes"),
                        (struct.pack("<I", 1) + b"a" + b"\0" * 4, "4 bytes beyond its 1 elements"),
                        (b"\x05\x00\x00\x00abcd", "claims 5 bytes"), (b"\x05\x00", "ends before element 0")):
        body = json.dumps({"inputs": [{**header["inputs"][0], "parameters": {"binary_data_size": len(blob)}},
                                      header["inputs"][1]]}).encode()
        refused(body + blob, match, header_length=str(len(body)))


def test_strict_json_names_the_duplicate_after_unescaping():
    with pytest.raises(Refusal, match='key "a" twice'):
        strict_json(b'{"b": {"a": 1, "\\u0061": 2}}')
    assert strict_json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
