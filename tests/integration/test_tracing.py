"""Triton's request tracing as ``tce serve --trace-file`` / ``--trace-otel`` turn it on: one
request, traced, shows each step of the ensemble with its timestamps in order, from the
trace file and from the OpenTelemetry spans a collector receives."""
from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tce.cli import main
from tce.lib.triton_trace import STEP_EVENTS, RequestTrace, pick, read_traces
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce.serving.tracing import TraceConfig
from tests.hostile import json_body, post_json

pytestmark = pytest.mark.integration
STEPS = ["preprocessor", "multimodal_model", "calibrator"]


def _serve_one_request(repository: Path, trace: TraceConfig, log: Path) -> None:
    config = ServerConfig(repository, *free_ports(), trace=trace)
    with EmbeddedServer(config, log_path=log) as server:
        status, body = post_json(server.config.http_url, {**json_body(), "id": "traced-1"})
        assert status == 200, body
    # stopped: Triton has written (or exported) its traces


def _check_steps(trace: RequestTrace) -> None:
    assert [s.model for s in trace.steps] == STEPS
    root = trace.root
    for step in trace.steps:
        times = [step.events[name] for name in STEP_EVENTS]
        assert times == sorted(times), f"{step.model}: {step.events}"
        assert root.events["REQUEST_START"] <= times[0] and times[-1] <= root.events["REQUEST_END"]
    starts = [s.events["REQUEST_START"] for s in trace.steps]
    assert starts == sorted(starts)
    # each step starts once the one before has begun giving its outputs
    for before, after in zip(trace.steps, trace.steps[1:], strict=False):
        assert before.events["COMPUTE_OUTPUT_START"] <= after.events["REQUEST_START"]


def test_a_trace_file_shows_each_step_of_one_request_in_order(bimodal_server, tmp_path, capsys):
    path = tmp_path / "trace.json"
    _serve_one_request(bimodal_server.repository, TraceConfig(file=path, rate=1), tmp_path / "triton.log")
    trace = pick(read_traces(path), "traced-1")
    assert trace.root.model == "calibrated_ensemble" and trace.root.request_id == "traced-1"
    _check_steps(trace)
    assert trace.root.events["HTTP_RECV_START"] <= trace.root.events["REQUEST_START"]

    assert main(["trace", str(path), "--request-id", "traced-1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("request 'traced-1' to calibrated_ensemble (version 1):")
    rows = [line.split() for line in printed[2:]]
    assert [r[0] for r in rows] == ["HTTP", "calibrated_ensemble", *STEPS, "HTTP"]
    step_rows = {r[0]: [float(v) for v in r[1:]] for r in rows if r[0] in STEPS}
    for name in STEPS:
        start, queue, compute, taking, infer, giving, end = step_rows[name]
        assert 0 <= start <= end and abs(compute - (taking + infer + giving)) < 0.02


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OpenTelemetry collector's OTLP/HTTP receiver, as far as a test needs: it keeps what it is sent."""

    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/traces" and self.headers.get("Content-Type", "").startswith("application/json"):
            self.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def collector() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()


def test_opentelemetry_spans_reach_a_collector_with_each_step(bimodal_server, tmp_path, collector):
    url, received = collector
    trace = TraceConfig(otel_url=url, rate=1, settings=("opentelemetry,bsp_schedule_delay=100",))
    _serve_one_request(bimodal_server.repository, trace, tmp_path / "triton.log")
    assert received, "Triton exported no spans"
    exported = tmp_path / "otlp.jsonl"  # as a collector's file exporter keeps them
    exported.write_text("\n".join(json.dumps(d) for d in received) + "\n")
    [request] = read_traces(exported)
    assert request.root.model == "calibrated_ensemble"
    _check_steps(request)
