"""Seed 003's request bodies and seed 000's responses, as both SageMaker paths read and
write them (tce_client.seed_requests, tce_client.seed_format): no model needed."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tce_client import Prediction, TaskResult
from tce_client.errors import RecordError
from tce_client.seed_format import UnsupportedMediaType, response_type, seed_npy, seed_response, seed_rows
from tce_client.seed_requests import NO_LIMITS, BodyLimits, BodyTooLarge, SeedBodyError, read_seed_body

FIELDS = ("dialogue", "order_amount", "payment_method")


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def records(body, content_type, limits=NO_LIMITS):
    return read_seed_body(body, content_type, limits).records_for(FIELDS)


@pytest.mark.parametrize("body", [
    '{"dialogue": "hi", "order_amount": null, "payment_method": "card"}',
    '[{"dialogue": "hi", "order_amount": null, "payment_method": "card"}]',
    '{"instances": [{"dialogue": "hi", "order_amount": null, "payment_method": "card"}]}',
])
def test_json_shapes_give_the_same_record(body):
    assert records(body, "application/json; charset=utf-8") == [
        {"dialogue": "hi", "order_amount": None, "payment_method": "card"}]


def test_csv_with_a_header_in_any_order_and_without_one_in_schema_order():
    with_header = records("payment_method,dialogue,order_amount\ncard,\"hi, there\",\n", "text/csv")
    without = records("\"hi, there\",,card\r\n\n", "text/csv")
    assert with_header == without == [{"dialogue": "hi, there", "order_amount": None, "payment_method": "card"}]
    # a header naming only some fields is a header (the rest are missing, judged by the schema)
    assert records("dialogue\nhello\n", "text/csv") == [{"dialogue": "hello"}]


@pytest.mark.parametrize("body, words", [
    ("dialogue,amount,payment_method\nhi,1,card\n", ["line 1", "dialogue", "'amount'", "header"]),
    ("dialogue,dialogue\nhi,ho\n", ["'dialogue' twice"]),
    ("hi,1\n", ["record 0", "2 values", "dialogue, order_amount, payment_method"]),
    ("dialogue,order_amount,payment_method\nhi,1\n", ["record 0", "2 values", "header names 3"]),
    ("dialogue,order_amount,payment_method\n", ["header line and no records"]),
    ("\n\n", ["no records"]),
    ('"unclosed,1,card\n', ["not CSV"]),
    (b"hi,1,\xff\n", ["not UTF-8", "byte 5"]),
])
def test_bad_csv_is_named(body, words):
    with pytest.raises(SeedBodyError) as error:
        records(body, "text/csv")
    assert all(word in str(error.value) for word in words), str(error.value)


def test_npy_plain_and_structured_arrays_name_the_same_fields():
    plain = np.array([["hi", "2.5", "card"], ["", "nan", ""]])
    structured = np.zeros(2, dtype=[("dialogue", "U8"), ("order_amount", "f8"), ("payment_method", "S8")])
    structured["dialogue"] = ["hi", ""]
    structured["order_amount"] = [2.5, np.nan]
    structured["payment_method"] = [b"card", b""]
    from_plain = records(npy(plain), "application/x-npy")
    from_structured = records(npy(structured), "application/x-npy")
    assert from_plain[0] == {"dialogue": "hi", "order_amount": "2.5", "payment_method": "card"}
    assert from_plain[1] == {"dialogue": None, "order_amount": "nan", "payment_method": None}
    assert from_structured[0] == {"dialogue": "hi", "order_amount": 2.5, "payment_method": "card"}
    assert np.isnan(from_structured[1]["order_amount"]) and from_structured[1]["payment_method"] is None
    one = records(npy(np.array(["hi", "1", "card"])), "application/x-npy")  # 1-D: one record
    assert one == [{"dialogue": "hi", "order_amount": "1", "payment_method": "card"}]
    fortran = records(npy(np.asfortranarray(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))), "application/x-npy")
    assert [r["payment_method"] for r in fortran] == [3.0, 6.0]


def _declared(shape: tuple, descr: str = "<f8") -> bytes:
    """A .npy header declaring ``shape`` followed by 8 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 8


@pytest.mark.parametrize("body, words", [
    (npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), ["Python objects", "unpickle"]),
    (npy(np.zeros((2, 2))), ["record 0", "2 values", "3 input fields"]),
    (npy(np.zeros((2, 3, 1))), ["shape [2, 3, 1]"]),
    (npy(np.zeros((0, 3))), ["shape [0, 3]"]),
    (npy(np.array([1 + 2j, 3, 4])), ["dtype", "not accepted"]),
    (npy(np.array(["2020-01-01"], dtype="M8[D]")), ["dtype", "not accepted"]),
    (_declared((1 << 40, 3)), ["8 bytes of data", "takes"]),
    (b"\x93NUMPY\x01\x00" + b"\xff" * 20, ["not a .npy array"]),
    (b"not an array", ["not a .npy array"]),
    (npy(np.array([[b"\xff", b"1", b"card"]])), ["record 0", "column 0", "not UTF-8"]),
])
def test_bad_npy_is_refused_without_loading_it(body, words):
    with pytest.raises((SeedBodyError, RecordError)) as error:
        records(body, "application/x-npy")
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("body, words", [
    ("{", ["not valid JSON"]),
    ("[1, 2]", ["record 0 is a number"]),
    ("[]", ["non-empty list"]),
    ("{}", ["empty JSON object", '{"instances": [records]}']),
    ('{"dialogue": "a", "dialogue": "b"}', ["'dialogue' twice"]),
    (b'{"dialogue": "\xff"}', ["not UTF-8"]),
    ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
])
def test_bad_json_is_named(body, words):
    with pytest.raises(SeedBodyError) as error:
        records(body, "application/json")
    assert all(word in str(error.value) for word in words), str(error.value)


def test_limits_bound_records_and_values_before_the_work():
    limits = BodyLimits(max_records=2, max_elements=9)
    with pytest.raises(SeedBodyError, match="3 records; the model takes at most 2"):
        records(json.dumps([{"dialogue": "x"}] * 3), "application/json", limits)
    with pytest.raises(SeedBodyError, match="3 records; the model takes at most 2"):
        records("a,1,b\n" * 3, "text/csv", limits)
    assert len(records("dialogue,order_amount,payment_method\na,1,b\na,1,b\n", "text/csv", limits)) == 2
    with pytest.raises(SeedBodyError, match="3 records; the model takes at most 2"):
        records(npy(np.zeros((3, 3))), "application/x-npy", limits)
    limits = BodyLimits(max_records=100, max_elements=7)
    with pytest.raises(BodyTooLarge, match="more than 7 values"):
        records("a,1,b\n" * 4, "text/csv", limits)
    with pytest.raises(BodyTooLarge, match="more than 7 values"):
        records("a,1,b," * 3 + "\n", "text/csv", limits)
    with pytest.raises(BodyTooLarge, match="more than 7 values"):
        records(npy(np.zeros((2, 4))), "application/x-npy", limits)
    with pytest.raises(UnsupportedMediaType, match="'image/png'.*application/json, text/csv, application/x-npy"):
        read_seed_body(b"", "image/png")


def _prediction(raw, calibrated, fallback=False):
    result = TaskResult("abuse", ("no", "yes"), np.array(raw, np.float32), np.array(calibrated, np.float32),
                        "yes", fallback)
    return Prediction({"abuse": result}, "v1")


def test_responses_by_accept_and_the_fallback_flag():
    healthy = [_prediction([0.25, 0.75], [0.5, 0.5]), _prediction([0.875, 0.125], [0.75, 0.25])]
    assert response_type(None) == response_type("*/*") == response_type("application/json") == "application/json"
    assert response_type("image/png, text/csv;q=0.5") == "text/csv"
    assert response_type("application/x-npy") == "application/x-npy"
    with pytest.raises(UnsupportedMediaType, match="Accept 'application/xml'"):
        response_type("application/xml")
    assert json.loads(seed_response(healthy, "application/json"))["predictions"][0] == {
        "legacy-score": "0.75", "calibrated-score": "0.5", "output-label": "class-1"}
    array = np.load(io.BytesIO(seed_response(healthy, "application/x-npy")), allow_pickle=False)
    assert array["legacy-score"].tolist() == [0.75, 0.125] and array["output-label"].tolist() == ["class-1", "class-0"]
    broken = [_prediction([0.25, 0.75], [0.25, 0.75], fallback=True), healthy[1]]
    rows = seed_rows(broken)
    assert [r["calibration-fallback"] for r in rows] == ["True", "False"]
    assert seed_response(broken, "text/csv").splitlines()[0] == \
        "legacy-score,calibrated-score,output-label,calibration-fallback"
    assert np.load(io.BytesIO(seed_npy(rows)))["calibration-fallback"].tolist() == ["True", "False"]
