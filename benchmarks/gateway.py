"""What the front door costs per request: the same requests sent to Triton directly and
through the gateway (nginx + the checking door), interleaved in one run.

    .venv/bin/python -m benchmarks.gateway [--repository model_repository] [--requests 1500]

The requests go to the calibrator step (one record of probabilities), whose own work is
a fraction of a millisecond, so the difference is the gateway's: parsing, checking,
re-encoding and the two extra hops. Prints p50/p90 per route and protocol, the added
p50, and throughput at 16 requests in flight, each pair measured side by side.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_backends import graph
from tce_gateway.launcher import Gateway


def _probabilities(width: int) -> list[float]:
    return [round(1.0 / width, 6)] * width


class HttpCaller:
    """One keep-alive connection per thread."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url, self.body, self.local = url, body, threading.local()

    def __call__(self) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            host, port = self.url.rsplit(":", 1)
            connection = self.local.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", f"/v2/models/{graph.CALIBRATOR}/infer", self.body,
                           {"Content-Type": "application/json"})
        answer = connection.getresponse()
        payload = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {payload[:200]!r}")


class GrpcCaller:
    def __init__(self, url: str, payload: bytes) -> None:
        self.channel = grpc.insecure_channel(url)
        self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.payload = payload

    def __call__(self) -> None:
        self.call(self.payload, timeout=30)


def lone_latencies(callers: dict[str, Callable[[], None]], requests: int) -> dict[str, list[float]]:
    """Each caller in turn, one request at a time, so drift on a busy machine hits all alike."""
    timings: dict[str, list[float]] = {name: [] for name in callers}
    for call in callers.values():
        for _ in range(20):
            call()  # warm-up: connections, caches
    for _ in range(requests):
        for name, call in callers.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return timings


def throughput(call: Callable[[], None], in_flight: int, seconds: float) -> float:
    done, stop = [0] * in_flight, time.monotonic() + seconds

    def worker(index: int) -> None:
        while time.monotonic() < stop:
            call()
            done[index] += 1

    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(worker, range(in_flight)))
    return sum(done) / seconds


def interleaved_throughput(callers: dict[str, Callable[[], None]], in_flight: int, seconds: float,
                           window_s: float = 1.0) -> dict[str, float]:
    """Requests per second per caller, in alternating windows of ``window_s``."""
    totals = {name: 0.0 for name in callers}
    for _ in range(max(1, round(seconds / window_s))):
        for name, call in callers.items():
            totals[name] += throughput(call, in_flight, window_s) * window_s
    return {name: total / (max(1, round(seconds / window_s)) * window_s) for name, total in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--requests", type=int, default=1500, help="lone requests per route and protocol")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per route (1 s windows, "
                        "taken in turn)")
    args = parser.parse_args(argv)
    config = ServerConfig(args.repository, *free_ports())
    with EmbeddedServer(config):
        width = _input_width(config.http_url)
        body = json.dumps({"inputs": [{"name": "probabilities", "shape": [1, width], "datatype": "FP32",
                                       "data": _probabilities(width)}]}).encode()
        message = service_pb2.ModelInferRequest(model_name=graph.CALIBRATOR)
        message.inputs.add(name="probabilities", datatype="FP32", shape=[1, width])
        message.raw_input_contents.append(np.array(_probabilities(width), dtype="<f4").tobytes())
        payload = message.SerializeToString()
        http_port, grpc_port = free_ports(2)
        with Gateway.for_server(config.http_url, config.grpc_url, http_port=http_port, grpc_port=grpc_port):
            callers = {"HTTP direct": HttpCaller(config.http_url, body),
                       "HTTP gateway": HttpCaller(f"127.0.0.1:{http_port}", body),
                       "gRPC direct": GrpcCaller(config.grpc_url, payload),
                       "gRPC gateway": GrpcCaller(f"127.0.0.1:{grpc_port}", payload)}
            timings = lone_latencies(callers, args.requests)
            rates = interleaved_throughput(callers, 16, args.seconds)
    print(f"gateway cost per request (calibrator step, one record; {args.requests} lone requests per route, "
          "interleaved; then 16 in flight)")
    for protocol in ("HTTP", "gRPC"):
        direct, front = timings[f"{protocol} direct"], timings[f"{protocol} gateway"]
        p50 = statistics.median(direct) * 1e3, statistics.median(front) * 1e3
        p90 = float(np.percentile(direct, 90)) * 1e3, float(np.percentile(front, 90)) * 1e3
        rate = rates[f"{protocol} direct"], rates[f"{protocol} gateway"]
        print(f"  {protocol:<5} p50 direct {p50[0]:6.2f} ms, gateway {p50[1]:6.2f} ms: added {p50[1] - p50[0]:5.2f} ms"
              f"  | p90 {p90[0]:6.2f} / {p90[1]:6.2f} ms  | 16 in flight: {rate[0]:7.0f} / {rate[1]:7.0f} req/s "
              f"(x{rate[1] / rate[0]:.2f})")
    return 0


def _input_width(http_url: str) -> int:
    """The calibrator's probabilities per record, from its config."""
    host, port = http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", f"/v2/models/{graph.CALIBRATOR}/config")
    config = json.loads(connection.getresponse().read())
    return int(np.prod(config["input"][0]["dims"]))


if __name__ == "__main__":
    raise SystemExit(main())
