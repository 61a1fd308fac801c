"""A repository built with ``--preprocessor-batching`` behind the gateway: the preprocessor
merges callers' requests into one execution, and bad requests merged with good ones fail
alone (issue 25: batch without losing isolation). The door rebuilds every tensor it forwards,
so a broken BYTES length prefix is refused at the door and never reaches Triton's batch."""
from __future__ import annotations

import concurrent.futures
import json
import urllib.request

import numpy as np
import pytest

from tce.repository.builder import RepositoryOptions, write_repository
from tce.serving.server import free_ports
from tce_backends.graph import PREPROCESSOR
from tce_gateway.config import GatewayConfig, Limits, Replica
from tce_gateway.launcher import Gateway
from tests.hostile import GOOD_RECORD, abuse_score, json_body, post_binary, post_json
from tests.integration.conftest import nginx_missing, start_server

pytestmark = pytest.mark.integration
NGINX = nginx_missing()


@pytest.fixture(scope="module")
def merged_behind_gateway(bimodal_bundle, tmp_path_factory):
    if NGINX:
        pytest.skip(NGINX)
    repository = write_repository(bimodal_bundle, tmp_path_factory.mktemp("repository_merged"),
                                  RepositoryOptions(preprocessor_batching=True))
    server = start_server(repository)
    try:
        http_port, grpc_port = free_ports(2)
        config = GatewayConfig(http_port=http_port, grpc_port=grpc_port, limits=Limits(max_body_bytes=1 << 20))
        replica = Replica(server.config.http_url, server.config.grpc_url)
        with Gateway((replica,), config, admin_key="the-operators-own-key-0123456789",
                     triton_admin_key=server.admin_key) as gateway:
            yield server, f"{gateway.address}:{gateway.http_port}"
    finally:
        server.stop()


def _preprocessor_stats(http_url: str) -> tuple[int, int]:
    """(executions, requests) of the preprocessor so far, from Triton's statistics."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{PREPROCESSOR}/stats", timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    return int(stats["execution_count"]), int(stats["inference_stats"]["success"]["count"])


BAD_REQUESTS = {  # what each sends -> the field its error must name
    "broken BYTES length prefix": (lambda url: post_binary(url, b"\xff\xff\xff\x7f" + b"hello"), "dialogue"),
    "1e308 feature": (lambda url: post_json(url, json_body({**GOOD_RECORD, "numeric_features": [1e308, 2, 3, 4, 5]})),
                      "order_amount"),
}


def test_merged_preprocessor_requests_fail_alone_behind_the_gateway(merged_behind_gateway):
    server, door = merged_behind_gateway
    status, body = post_json(door, json_body())
    assert status == 200, body
    reference = abuse_score(body)
    before = _preprocessor_stats(server.config.http_url)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for round_ in range(8):
            send_bad, field = list(BAD_REQUESTS.values())[round_ % len(BAD_REQUESTS)]
            bads = [pool.submit(send_bad, door) for _ in range(4)]
            goods = [pool.submit(post_json, door, json_body()) for _ in range(12)]
            for future in goods:
                status, body = future.result(timeout=120)
                assert status == 200, body[:300]
                np.testing.assert_allclose(abuse_score(body), reference, atol=1e-6)
            for future in bads:
                status, body = future.result(timeout=120)
                assert status == 400 and field in body.decode(errors="replace"), (status, body[:300])
    executions, requests = (a - b for a, b in zip(_preprocessor_stats(server.config.http_url), before, strict=True))
    assert requests >= 8 * 12 and executions < requests, "the preprocessor never merged two requests"
