"""``tce loadtest``: run the locust load test headless for a bounded time and
return its SLO verdict as the exit code.

Without ``--http-url``/``--grpc-url`` it serves the repository on the embedded
Triton server for the duration of the run (free ports), warms it up, and stops it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tce_backends.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
LOAD_TESTS = REPO_ROOT / "load_tests"


@dataclass(frozen=True)
class LoadTestConfig:
    users: int = 4
    spawn_rate: float = 4.0
    duration: str = "30s"
    slo_file: Path = LOAD_TESTS / "slo.yaml"
    reports: Path = LOAD_TESTS / "reports"
    protocols: tuple[str, ...] = ("http", "grpc")

    def __post_init__(self) -> None:
        if self.users < 1:
            raise UsageError(f"users must be >= 1, got {self.users}")
        if self.spawn_rate <= 0:
            raise UsageError(f"spawn_rate must be > 0, got {self.spawn_rate}")
        if not self.duration or not self.duration[0].isdigit():
            raise UsageError(f"duration must look like 30s, 2m or 1h, got {self.duration!r}")
        if not Path(self.slo_file).is_file():
            raise UsageError(f"SLO file {self.slo_file} does not exist")
        unknown = set(self.protocols) - {"http", "grpc"}
        if not self.protocols or unknown:
            raise UsageError(f"protocols must be http and/or grpc, got {list(self.protocols)}")


def locust_command(config: LoadTestConfig, http_url: str, grpc_url: str,
                   idle_p50_ms: dict[str, float] | None = None) -> list[str]:
    config.reports.mkdir(parents=True, exist_ok=True)
    users = {"http": "HttpEnsembleUser", "grpc": "GrpcEnsembleUser"}
    return [sys.executable, "-m", "locust", "-f", str(LOAD_TESTS / "locustfile.py"), "--headless",
            "--users", str(config.users), "--spawn-rate", str(config.spawn_rate), "--run-time", config.duration,
            "--stop-timeout", "10", "--only-summary",
            "--csv", str(config.reports / "loadtest"), "--html", str(config.reports / "loadtest.html"),
            "--triton-http", http_url, "--triton-grpc", grpc_url, "--slo-file", str(config.slo_file),
            "--slo-report", str(config.reports / "slo_verdict.json"),
            "--idle-p50-ms", ",".join(f"{p}={v:.3f}" for p, v in (idle_p50_ms or {}).items()),
            *(users[p] for p in config.protocols)]


def warm_up(http_url: str, grpc_url: str, protocols: tuple[str, ...], idle_requests: int = 30
            ) -> dict[str, float]:
    """First calls pay lazy initialisation in every step: keep them out of the SLO. Then
    time single requests to the idle server, one at a time: per protocol, their p50 (ms)
    is what ``max_p99_over_idle_p50`` compares the loaded p99 with."""
    import time

    import numpy as np

    from tce.jobs.demo import SAMPLE_RECORDS as records
    from tce_client import CalibratedClassifierClient

    idle = {}
    for protocol in protocols:
        with CalibratedClassifierClient(http_url if protocol == "http" else grpc_url, protocol=protocol) as client:
            for record in records:
                client.predict([record])
            latencies = []
            for index in range(idle_requests):
                started = time.perf_counter()
                client.predict([records[index % len(records)]])
                latencies.append((time.perf_counter() - started) * 1000)
        idle[protocol] = float(np.percentile(latencies, 50))
    return idle


def run(config: LoadTestConfig, repository: Path | None = None, http_url: str | None = None,
        grpc_url: str | None = None) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))

    def drive(http: str, grpc: str) -> int:
        idle = warm_up(http, grpc, config.protocols)
        return subprocess.run(locust_command(config, http, grpc, idle), env=env).returncode

    if http_url and grpc_url:
        return drive(http_url, grpc_url)
    from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

    if repository is None:
        raise UsageError("give a repository to serve, or both --http-url and --grpc-url")
    with EmbeddedServer(ServerConfig(Path(repository), *free_ports())) as server:
        logging.getLogger(__name__).info(f"embedded Triton serving {repository} (HTTP {server.config.http_url}, "
                                         f"gRPC {server.config.grpc_url})")
        return drive(server.config.http_url, server.config.grpc_url)
