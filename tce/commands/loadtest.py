"""``tce loadtest``: locust against the embedded server, judged by the SLOs."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, PROTOCOLS, Commands, add_command


def _loadtest(args: argparse.Namespace) -> int:
    from tce.jobs.loadtest import LoadTestConfig, run

    config = LoadTestConfig(users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                            slo_file=args.slo_file, reports=args.reports, protocols=tuple(args.protocol or PROTOCOLS))
    code = run(config, repository=args.repository, http_url=args.http_url, grpc_url=args.grpc_url)
    print(f"reports: {config.reports}/loadtest.html, loadtest_stats.csv, slo_verdict.json")
    return code


def add(commands: Commands) -> None:
    p = add_command(commands, "loadtest", "locust load test with latency SLOs (exit 1 on a miss)", _loadtest)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="served on the embedded server")
    p.add_argument("--http-url", default=None, help="test a running server instead (with --grpc-url)")
    p.add_argument("--grpc-url", default=None, help="gRPC host:port of the running server")
    p.add_argument("--users", type=int, default=4, help="concurrent locust users per protocol")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument("--duration", default="30s", help="run time, e.g. 30s, 2m")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS, help="protocol to test (if not given: both)")
    p.add_argument("--slo-file", type=Path, default=Path("load_tests/slo.yaml"), help="latency SLOs to check")
    p.add_argument("--reports", type=Path, default=Path("load_tests/reports"), help="where reports are written")
