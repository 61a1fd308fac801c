"""What the prediction log costs per request: the same requests through three gateways in front
of one server, without the log, logging a tenth of the answers, and logging every answer
(rate 1, the worst case), interleaved in one run.

    .venv/bin/python -m benchmarks.prediction_log [--repository model_repository] [--requests 600]

The served repository is a copy with the instant model (tce.jobs.instant: model.pt replaced by
a constant module of the same signature), so the ensemble's own work is small and the log's
share shows. Prints p50/p90 of lone v1 requests (one record, with an X-Request-Id), throughput
at 16 in flight, and what each gateway's door workers wrote.
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np

from benchmarks.gateway import interleaved_throughput, lone_latencies
from tce.jobs.instant import instant_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_gateway.config import GatewayConfig, PredictionLogConfig, Replica
from tce_gateway.launcher import Gateway

RECORD = {"dialogue": "buyer: my parcel never arrived, I want a refund", "order_amount": 45.5,
          "account_age_days": 800, "prior_claims": 3, "seller_rating": 2.9, "message_count": 2,
          "payment_method": "card", "marketplace": "UK", "item_category": "home"}


class V1Caller:
    """One keep-alive connection per thread; each request carries a new X-Request-Id."""

    def __init__(self, url: str) -> None:
        self.url, self.local, self.ids = url, threading.local(), itertools.count()
        self.body = json.dumps({"instances": [RECORD]}).encode()

    def __call__(self) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            host, port = self.url.rsplit(":", 1)
            connection = self.local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/v1/models/calibrated_ensemble:predict", self.body,
                           {"Content-Type": "application/json", "X-Request-Id": f"bench-{next(self.ids)}"})
        answer = connection.getresponse()
        payload = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {payload[:200]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=600, help="lone requests per gateway")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per gateway (1 s windows)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tce-prediction-log-") as work:
        repository = instant_repository(args.repository, Path(work) / "repository")
        log_dir = Path(work) / "predictions"
        config = ServerConfig(repository, *free_ports())
        with EmbeddedServer(config):
            replica = (Replica(config.http_url, config.grpc_url),)
            gateways, callers = [], {}
            for name, rate in (("no log", None), ("rate 0.1", 0.1), ("rate 1", 1.0)):
                http_port, grpc_port = free_ports(2)
                log = PredictionLogConfig(str(log_dir / name), rate=rate) if rate else None
                gateways.append(Gateway(replica, GatewayConfig(http_port=http_port, grpc_port=grpc_port,
                                                               prediction_log=log)).start())
                callers[name] = V1Caller(f"127.0.0.1:{http_port}")
            try:
                timings = lone_latencies(callers, args.requests)
                rates = interleaved_throughput(callers, 16, args.seconds)
            finally:
                for gateway in gateways:
                    gateway.stop()
        written = {name: sum(1 for f in (log_dir / name).glob("*.jsonl") for _ in f.open("rb"))
                   for name in callers if name != "no log"}
    print(f"prediction log cost per request (v1, one record, instant model; {args.requests} lone requests per "
          "gateway, interleaved; then 16 in flight)")
    for name, values in timings.items():
        print(f"  {name:<12} p50 {statistics.median(values) * 1e3:6.2f} ms  p90 "
              f"{float(np.percentile(values, 90)) * 1e3:6.2f} ms  | 16 in flight: {rates[name]:6.0f} req/s")
    for name, count in written.items():
        added = (statistics.median(timings[name]) - statistics.median(timings["no log"])) * 1e3
        print(f"  {name}: added p50 {added:+.2f} ms, throughput x{rates[name] / rates['no log']:.2f}, "
              f"{count} records logged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
