"""``tce trace``: one request's per-step timeline from Triton's traces (tce serve --trace-file)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import Commands, add_command


def _trace(args: argparse.Namespace) -> int:
    from tce.lib.triton_trace import format_timeline, pick, read_traces

    traces = read_traces(args.path)
    chosen = traces if args.all else [pick(traces, args.request_id)]
    print("\n".join(format_timeline(trace) for trace in chosen), end="")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "trace", "one traced request's timeline: each step's queue and compute times "
                    "(from tce serve --trace-file, or OTLP/JSON)", _trace)
    p.add_argument("path", type=Path, help="the trace file (or FILE whose parts FILE.0, FILE.1, ... Triton wrote)")
    p.add_argument("--request-id", default=None, help="the request whose caller sent this id (if not given: the "
                   "last traced request)")
    p.add_argument("--all", action="store_true", help="every traced request, in the order they started")
