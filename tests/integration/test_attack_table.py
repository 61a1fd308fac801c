"""The attack table (tests/attacks.py) against a real server: about a hundred kinds of bad
input over HTTP JSON, HTTP binary tensors, raw gRPC and direct step calls, each sent
beside good requests. None may crash or hang the server or change a neighbour's answer."""
from __future__ import annotations

import pytest

from tce.serving.gateway import Gateway, GatewayError, find_nginx
from tce.serving.server import free_ports
from tests.attacks import CLEAR, DEFAULT, UNCLEAR, Target, catalogue, run, table

pytestmark = pytest.mark.integration
# Triton 2.51's own HTTP frontend answers these with a 500 (or an odd 400) before any step
# runs; the gateway turns every one into a 400 naming the input.
TRITON_FRONTEND_MESSAGES = ("Unable to parse", "failed to parse the request JSON", "inference header size",
                            "Raw request must only have")


def _alive(server):
    return lambda: server.server.process is not None and server.server.process.poll() is None


def test_no_bad_input_crashes_hangs_or_harms_when_sent_to_triton(bimodal_server):
    attacks = [a for a in catalogue() if not a.needs_gateway]
    outcomes = run(Target(bimodal_server.http_url, bimodal_server.grpc_url), attacks, _alive(bimodal_server))
    print(table(outcomes))
    assert len(outcomes) == len(attacks) >= 90
    assert {o.verdict for o in outcomes} <= {CLEAR, DEFAULT, UNCLEAR}, table(outcomes)
    for outcome in outcomes:
        if outcome.verdict == UNCLEAR:
            assert outcome.attack.channel in ("http-json", "http-binary", "step"), table(outcomes)
            assert any(m in outcome.detail for m in TRITON_FRONTEND_MESSAGES), outcome


def test_through_the_gateway_every_bad_input_gets_a_clear_error_or_its_default(bimodal_server):
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    http, grpc = free_ports(2)
    with Gateway(bimodal_server.http_url, bimodal_server.grpc_url, http_port=http, grpc_port=grpc):
        outcomes = run(Target(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"), catalogue(), _alive(bimodal_server))
    print(table(outcomes))
    assert len(outcomes) == len(catalogue())
    assert all(o.verdict in (CLEAR, DEFAULT) for o in outcomes), table(outcomes)
