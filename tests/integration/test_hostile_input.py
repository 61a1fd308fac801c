"""Hostile input against a real server: no request may hang it, crash it or change
another request's answer. Each case here hung, crashed or corrupted neighbours when
two ensemble steps read caller input in parallel (see docs/security.md)."""
from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tce_client import CalibratedClassifierClient
from tests.hostile import GOOD_RECORD, abuse_score, bytes_element, json_body, post_binary, post_json

pytestmark = pytest.mark.integration


def _alive(server) -> None:
    status, body = post_json(server.http_url, json_body(), timeout=30)
    assert status == 200, body


def test_invalid_text_among_concurrent_grpc_requests_never_deadlocks(bimodal_server):
    """One shared gRPC client, 4 threads, one request in each round with invalid
    UTF-8: the old parallel tokenizer/tabular steps deadlocked within a few rounds."""
    client = CalibratedClassifierClient(bimodal_server.grpc_url, protocol="grpc", timeout_s=30)
    good = client.schema.encode([{"dialogue": "buyer: where is my order", "order_amount": 3.0}] * 4,
                                allow_missing_fields=True)
    bad = {name: array.copy() for name, array in good.items()}
    bad["dialogue"] = np.array([[b"\xff\xfe not utf-8"]] * 4, dtype=object)

    def call(index: int) -> str:
        try:
            client.infer_arrays(bad if index == 0 else good, slice(0, 1 + index))
            return "ok"
        except Exception as error:  # noqa: BLE001 - the message is the verdict
            return str(error)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for round_ in range(100):
            futures = [pool.submit(call, i) for i in range(4)]
            done, hung = concurrent.futures.wait(futures, timeout=30)
            assert not hung, f"round {round_}: {len(hung)} requests hung"
            results = [f.result() for f in futures]
            assert "dialogue" in results[0] and "UTF-8" in results[0], results[0]
            assert results[1:] == ["ok"] * 3, results
    client.close()
    _alive(bimodal_server)


def _bad_requests() -> dict[str, tuple]:
    """name -> (sender, expected words in the error)."""
    malformed_prefix = b"\xff\xff\xff\x7f" + b"hello"  # claims 2 GiB, carries 5 bytes
    infinite = json.dumps(json_body()).replace("[1.0, 2.0, 3.0, 4.0, 5.0]", "[1.0, Infinity, 3.0, 4.0, 5.0]")
    invalid_utf8 = json.dumps(json_body()).encode().replace(b"buyer: hello there", b"buyer: \xff\xfe there")
    return {
        "binary non-UTF-8 text": (lambda url: post_binary(url, bytes_element(b"\xff\xfe")), "dialogue"),
        "malformed BYTES length prefix": (lambda url: post_binary(url, malformed_prefix), "dialogue"),
        "non-UTF-8 text in JSON": (lambda url: post_json(url, invalid_utf8), "dialogue"),
        "Infinity in JSON": (lambda url: post_json(url, infinite.encode()), "numeric_features"),
        "1e308 in JSON": (lambda url: post_json(url, json_body(
            {**GOOD_RECORD, "numeric_features": [1e308, 2, 3, 4, 5]})), "order_amount"),
        "1 MB category": (lambda url: post_json(url, json_body(
            {**GOOD_RECORD, "categorical_features": ["x" * 1_000_000, "US", "toys"]})), "payment_method"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_a_bad_request_never_harms_its_neighbours(bimodal_server, case):
    """Good and bad requests in flight together for 10 rounds: every good answer is
    unchanged, every bad one gets a 400 naming the field, and the server lives on."""
    send_bad, expected = _bad_requests()[case]
    status, body = post_json(bimodal_server.http_url, json_body())
    assert status == 200, body
    reference = abuse_score(body)

    def good(_):
        return post_json(bimodal_server.http_url, json_body())

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for _ in range(10):
            bads = [pool.submit(send_bad, bimodal_server.http_url) for _ in range(4)]
            goods = [pool.submit(good, i) for i in range(12)]
            for future in goods:
                status, body = future.result()
                assert status == 200, body[:300]
                assert np.allclose(abuse_score(body), reference, atol=1e-6)
            for future in bads:
                status, body = future.result()
                assert status == 400 and expected.encode() in body, (status, body[:300])
    _alive(bimodal_server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_mistakes_are_invalid_argument_errors(bimodal_server, protocol):
    """HTTP 400 / gRPC INVALID_ARGUMENT, not 500 / INTERNAL, with the field named."""
    if protocol == "http":
        status, body = post_json(bimodal_server.http_url, json_body(
            {**GOOD_RECORD, "numeric_features": [1, 2, 3.5e38, 4, 5]}))
        assert status == 400 and b"prior_claims" in body, body
        return
    client = grpcclient.InferenceServerClient(bimodal_server.grpc_url)
    tensor = grpcclient.InferInput("dialogue", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"\xc3\x28"]], dtype=object))
    numeric = grpcclient.InferInput("numeric_features", [1, 5], "FP64")
    numeric.set_data_from_numpy(np.ones((1, 5)))
    categorical = grpcclient.InferInput("categorical_features", [1, 3], "BYTES")
    categorical.set_data_from_numpy(np.array([[b"card", b"US", b"toys"]], dtype=object))
    with pytest.raises(InferenceServerException) as error:
        client.infer("calibrated_ensemble", [tensor, numeric, categorical])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "dialogue" in error.value.message()
