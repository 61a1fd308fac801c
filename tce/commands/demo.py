"""``tce demo``: serve the repository, score sample records over HTTP and gRPC, stop."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command


def _demo(args: argparse.Namespace) -> int:
    from tce.jobs.demo import run_demo

    return run_demo(args.repository, ports=(args.http_port, args.grpc_port, args.metrics_port))


def add(commands: Commands) -> None:
    p = add_command(commands, "demo", "serve a built repository, score sample records, stop", _demo)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (if not given: a free one)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (if not given: a free one)")
    p.add_argument("--metrics-port", type=int, default=None, help="metrics port (if not given: a free one)")
