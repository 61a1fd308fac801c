"""Locust users that call the ensemble through the client SDK, over HTTP and gRPC.

    locust -f load_tests/locustfile.py --headless -u 4 -r 4 -t 30s \
        --triton-http localhost:8000 --triton-grpc localhost:8001 --slo-file load_tests/slo.yaml

At the end of the run the SLOs in ``--slo-file`` are checked against exact
percentiles; any miss makes locust exit non-zero and names the SLO and the margin.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task

from load_tests.records import record_pool
from load_tests.slo import (
    PROTOCOLS,
    LatencyHistogram,
    SLOConfig,
    evaluate,
    format_verdict,
    parse_idle_p50,
    summarise,
    verdict_json,
)
from tce_client import CalibratedClassifierClient

grpc_gevent.init_gevent()  # grpcio must cooperate with locust's gevent loop; tritonclient.http is gevent-based

HISTOGRAMS = {protocol: LatencyHistogram() for protocol in PROTOCOLS}
ERRORS = {protocol: 0 for protocol in PROTOCOLS}
WINDOW = {"first": None, "last": None}
RECORDS = record_pool()


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--triton-http", default="localhost:8000", help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--triton-grpc", default="localhost:8001", help="host:port of Triton's gRPC endpoint")
    parser.add_argument("--slo-file", default=str(Path(__file__).with_name("slo.yaml")))
    parser.add_argument("--slo-report", default="", help="write the verdict as JSON here")
    parser.add_argument("--idle-p50-ms", default="", help="http=MS,grpc=MS: idle single-request p50 measured "
                        "just before, for max_p99_over_idle_p50 (tce loadtest measures it)")


class EnsembleUser(User):
    abstract = True
    protocol = "http"
    wait_time = between(0.005, 0.02)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        url = options.triton_http if self.protocol == "http" else options.triton_grpc
        self.ensemble = CalibratedClassifierClient(url, protocol=self.protocol)
        self.random = random.Random(id(self))
        fields = set(self.ensemble.schema.input_fields)  # the pool also serves the trimodal demo
        self.records = [{k: v for k, v in record.items() if k in fields} for record in RECORDS]

    def on_stop(self) -> None:
        self.ensemble.close()

    @task
    def predict(self) -> None:
        record = self.random.choice(self.records)
        error = None
        started = time.perf_counter()
        try:
            (prediction,) = self.ensemble.predict([record])
            # read both tasks' outputs, as a caller would
            if not 0.0 <= prediction["abuse"].calibrated_score <= 1.0 or not prediction["reason"].label:
                raise ValueError(f"implausible answer: {prediction}")
        except Exception as exc:  # noqa: BLE001 - every failure is an error in the report
            error = exc
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        now = time.monotonic()
        WINDOW["first"] = WINDOW["first"] or now - elapsed_ms / 1000.0
        WINDOW["last"] = now
        if error is None:
            HISTOGRAMS[self.protocol].record(elapsed_ms)
        else:
            ERRORS[self.protocol] += 1
        events.request.fire(request_type=self.protocol.upper(), name=self.ensemble.model,
                            response_time=elapsed_ms, response_length=0, exception=error, context={})


class HttpEnsembleUser(EnsembleUser):
    protocol = "http"


class GrpcEnsembleUser(EnsembleUser):
    protocol = "grpc"


@events.quitting.add_listener
def _verdict(environment, **_) -> None:
    options = environment.parsed_options
    config = SLOConfig.load(options.slo_file)
    duration = (WINDOW["last"] - WINDOW["first"]) if WINDOW["first"] else 0.0
    summaries = {p: summarise(p, HISTOGRAMS[p], ERRORS[p], duration) for p in PROTOCOLS
                 if HISTOGRAMS[p].total or ERRORS[p] or p in config.protocols}
    idle = parse_idle_p50(options.idle_p50_ms)
    checks = evaluate(config, summaries, idle)
    print(format_verdict(summaries, checks, idle), flush=True)
    if options.slo_report:
        Path(options.slo_report).write_text(verdict_json(summaries, checks, idle), encoding="utf-8")
    environment.process_exit_code = 0 if all(c.ok for c in checks) else 1
