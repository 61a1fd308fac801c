"""The attack table (tests/attacks.py) against a real server in explicit model-control
mode, over every route a caller can take: the gateway's HTTP and gRPC ports, its
SageMaker port, and Triton's own loopback ports. Each kind is sent beside good requests.

Through the gateway and the SageMaker port: every bad input gets a clear error or its
documented default; nothing crashes, hangs, harms a neighbour or loads a model. Sent to
Triton directly (what a process on the host can do), the kinds that kill Triton 2.51 are
left out; the rest may get Triton's own unclear errors, but no harm."""
from __future__ import annotations

import pytest

from tce.serving.server import free_ports
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import Gateway, find_nginx
from tests.attacks import CLEAR, DEFAULT, UNCLEAR, Target, catalogue, run, table
from tests.integration.conftest import serve_bundle

pytestmark = pytest.mark.integration
# Triton 2.51's own frontends answer these with a 500 (or an odd status) before any step
# runs; the gateway turns every one into an error naming the field.
TRITON_FRONTEND_MESSAGES = ("Unable to parse", "failed to parse the request JSON", "inference header size",
                            "Raw request must only have", "already exists in request", "Unable to find shared memory",
                            "Input must set only one", "Unsupported compression type", "This protocol is restricted",
                            '"Not Found"')


@pytest.fixture(scope="module")
def server(bimodal_bundle, tmp_path_factory):
    yield from serve_bundle(bimodal_bundle, tmp_path_factory, "attacks", explicit=True)


@pytest.fixture(scope="module")
def front(server):
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    http, grpc, sagemaker = free_ports(3)
    with Gateway.for_server(server.http_url, server.grpc_url, http_port=http, grpc_port=grpc,
                            sagemaker_port=sagemaker) as running:
        yield running


def _alive(server):
    return lambda: server.server.process is not None and server.server.process.poll() is None


def _attack(route: str, target: Target, server) -> list:
    outcomes = run(target, catalogue(), _alive(server))
    print(table(outcomes, route))
    assert len(outcomes) == len([a for a in catalogue() if a.applies(target)])
    return outcomes


def test_sent_to_triton_directly_nothing_crashes_hangs_harms_or_loads(server, tmp_path):
    target = Target("direct", server.http_url, server.grpc_url, server.http_url, tmp_path)
    outcomes = _attack("direct", target, server)
    assert len(outcomes) >= 110
    assert {o.verdict for o in outcomes} <= {CLEAR, DEFAULT, UNCLEAR}, table(outcomes)
    for outcome in outcomes:
        if outcome.verdict == UNCLEAR:
            assert any(m in outcome.detail for m in TRITON_FRONTEND_MESSAGES), outcome


def test_through_the_gateway_every_bad_input_gets_a_clear_error_or_its_default(server, front, tmp_path):
    target = Target("gateway", f"127.0.0.1:{front.http_port}", f"127.0.0.1:{front.grpc_port}", server.http_url,
                    tmp_path)
    outcomes = _attack("gateway", target, server)
    assert len(outcomes) >= 130
    assert all(o.verdict in (CLEAR, DEFAULT) for o in outcomes), table(outcomes)


def test_on_the_sagemaker_port_every_bad_input_gets_a_clear_error_or_its_default(server, front, tmp_path):
    target = Target("sagemaker", f"127.0.0.1:{front.sagemaker_port}", None, server.http_url, tmp_path)
    outcomes = _attack("sagemaker", target, server)
    assert len(outcomes) >= 100
    assert all(o.verdict in (CLEAR, DEFAULT) for o in outcomes), table(outcomes)
