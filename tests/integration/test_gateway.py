"""The nginx gateway in front of a real server: requests that crash Triton 2.51's
HTTP frontend are refused, everything a caller needs passes unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tce.build.repository import write_repository
from tce.serving.gateway import Gateway, GatewayError, find_nginx
from tce.serving.security import ADMIN_KEY_HEADER
from tce.serving.server import free_ports
from tce_client import CalibratedClassifierClient
from tests.hostile import abuse_score, json_body, post, post_json
from tests.integration.conftest import start_server

pytestmark = pytest.mark.integration
try:
    find_nginx()
    NGINX = ""
except GatewayError as missing:
    NGINX = str(missing)
needs_nginx = pytest.mark.skipif(bool(NGINX), reason=NGINX)
HUGE_SHAPE = {"name": "numeric_features", "shape": [1, 1099511627776], "datatype": "FP64", "data": [1.0]}


@pytest.fixture(scope="module")
def gateway(bimodal_server):
    if NGINX:
        pytest.skip(NGINX)
    http_port, grpc_port = free_ports(2)
    with Gateway(bimodal_server.http_url, bimodal_server.grpc_url, http_port=http_port, grpc_port=grpc_port,
                 max_body="1m") as running:
        yield running


def _url(gateway: Gateway, port: int) -> str:
    return f"{gateway.address}:{port}"


@needs_nginx
def test_callers_get_the_same_answers_through_the_gateway(gateway, bimodal_server, varied_records):
    for protocol, port, direct in (("http", gateway.http_port, bimodal_server.http_url),
                                   ("grpc", gateway.grpc_port, bimodal_server.grpc_url)):
        with CalibratedClassifierClient(_url(gateway, port), protocol=protocol) as client:
            via_gateway = client.predict(varied_records[:20])
        with CalibratedClassifierClient(direct, protocol=protocol) as client:
            expected = client.predict(varied_records[:20])
        for a, b in zip(via_gateway, expected, strict=True):
            np.testing.assert_array_equal(a["reason"].calibrated, b["reason"].calibrated)
    status, body = post_json(_url(gateway, gateway.http_port), json_body())
    assert status == 200 and len(abuse_score(body)) == 2


@needs_nginx
@pytest.mark.parametrize("case, expected_status, expected", [
    ("huge declared shape", 400, b"more than"),
    ("negative dimension", 400, b"positive integer"),
    ("deeply nested JSON", 400, b"nested too deeply"),
    ("lone surrogate escape", 400, b"lone UTF-16 surrogate"),
    ("4 values for shape [1, 5]", 400, b"holds 5 values but data has 4"),
    ("body over the limit", 413, b""),
    ("header length beyond the body", 400, b"Inference-Header-Content-Length"),
])
def test_requests_that_crash_triton_are_refused_at_the_gateway(gateway, bimodal_server, case, expected_status,
                                                                 expected):
    url = _url(gateway, gateway.http_port)
    headers = {}
    if case == "huge declared shape":
        body = json.dumps(json_body(numeric_features=HUGE_SHAPE)).encode()
    elif case == "negative dimension":
        body = json.dumps(json_body(numeric_features={**HUGE_SHAPE, "shape": [1, -5]})).encode()
    elif case == "deeply nested JSON":
        body = b'{"inputs": [{"name": "dialogue", "shape": [1, 1], "datatype": "BYTES", "data": ' + \
               b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    elif case == "lone surrogate escape":
        body = json.dumps(json_body()).replace("hello", "\\ud800").encode()
    elif case == "4 values for shape [1, 5]":
        body = json.dumps(json_body(numeric_features={"name": "numeric_features", "shape": [1, 5],
                                                      "datatype": "FP64", "data": [1.0] * 4})).encode()
    elif case == "body over the limit":
        body = json.dumps(json_body({"dialogue": ["x" * 2_000_000], "numeric_features": [1.0] * 5,
                                     "categorical_features": ["a", "b", "c"]})).encode()
    else:
        body, headers = json.dumps(json_body()).encode(), {"Inference-Header-Content-Length": "99999999"}
    status, answer = post(url, body, headers=headers)
    assert status == expected_status and expected in answer, (status, answer[:300])
    assert post_json(bimodal_server.http_url, json_body())[0] == 200  # Triton never saw it


@needs_nginx
def test_nan_and_infinity_pass_to_triton_which_reads_them(gateway):
    """NaN is the documented missing numeric; Infinity is refused by the preprocessor, naming the column."""
    url = _url(gateway, gateway.http_port)
    assert post(url, json.dumps(json_body()).replace("2.0", "NaN").encode())[0] == 200
    status, answer = post(url, json.dumps(json_body()).replace("2.0", "Infinity").encode())
    assert status == 400 and b"account_age_days" in answer and b"refused by the gateway" not in answer


@needs_nginx
def test_only_inference_and_discovery_are_open(gateway, bimodal_server):
    url = _url(gateway, gateway.http_port)
    assert post(url, b"{}", path="/v2/models/calibrated_ensemble/generate")[0] == 404
    assert post(url, b"{}", path="/v2/repository/index")[0] == 403
    status, answer = post(url, b"{}", path="/v2/repository/index",
                          headers={ADMIN_KEY_HEADER: bimodal_server.server.admin_key})
    assert status == 200 and b"calibrated_ensemble" in answer
    assert post(url, b"{}", path="/v2/repository/index", headers={ADMIN_KEY_HEADER: "wrong-key-of-some-length"})[0] \
        == 403  # Triton's own check behind the gateway's
    import urllib.request

    with urllib.request.urlopen(f"http://{url}/v2/models/calibrated_ensemble/config", timeout=10) as response:
        assert "tce_schema" in json.loads(response.read())["parameters"]


@needs_nginx
def test_the_same_request_sent_to_triton_directly_aborts_it(bimodal_bundle, tmp_path):
    """Why the gateway exists: Triton 2.51 allocates the declared shape before checking it.
    If this ever stops failing, the upstream bug is fixed (docs/security.md)."""
    server = start_server(write_repository(bimodal_bundle, tmp_path / "repository"))
    try:
        status, _ = post_json(server.config.http_url, json_body(numeric_features=HUGE_SHAPE), timeout=30)
        assert status == "EXC"
        assert server.process is not None and server.process.wait(timeout=30) != 0
        assert "std::bad_alloc" in server.log_path.read_text(encoding="utf-8", errors="replace")
    finally:
        server.stop()
