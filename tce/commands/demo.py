"""``tce demo``: serve the repository, score sample records over HTTP and gRPC, stop."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command


def _demo(args: argparse.Namespace) -> int:
    from tce.jobs.demo import run_demo

    return run_demo(args.repository)


def add(commands: Commands) -> None:
    p = add_command(commands, "demo", "serve a built repository, score sample records, stop", _demo)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")
