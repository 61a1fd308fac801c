"""``tce capacity``: replicas for a request rate and a p99 SLO, from the benchmark's figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import Commands, add_command


def _capacity(args: argparse.Namespace) -> int:
    from tce.jobs.capacity import load_points, plan_capacity

    print(plan_capacity(load_points(args.benchmark), args.rate, args.p99_ms, args.headroom, args.spare).describe())
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "capacity", "replicas for a request rate and p99 SLO, from make bench figures",
                 _capacity)
    p.add_argument("--benchmark", type=Path, default=Path("artifacts/benchmark.json"), help="tce benchmark output")
    p.add_argument("--rate", type=float, required=True, help="single-record requests per second to serve")
    p.add_argument("--p99-ms", type=float, required=True, help="p99 latency SLO in milliseconds")
    p.add_argument("--headroom", type=float, default=0.8, help="share of a replica's measured rate to plan with")
    p.add_argument("--spare", type=int, default=1, help="replicas beyond the need (rolling updates, drains)")
