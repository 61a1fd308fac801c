"""``tce benchmark``: served ensemble vs model.pt in process vs fixed padding (make bench)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command, int_list
from tce_client import DEFAULT_MODEL


def _benchmark(args: argparse.Namespace) -> int:
    from tce.jobs.benchmark import BenchmarkConfig, format_report, run_benchmark, write_json

    config = BenchmarkConfig(args.repository, records=args.records, long_thread_share=args.long_thread_share,
                             batch_sizes=args.batch_sizes, single_pairs=args.single_pairs,
                             concurrency=args.concurrency, seconds_per_level=args.seconds, device=args.device,
                             model=args.model)
    result = run_benchmark(config, grpc_url=args.grpc_url)
    print("\n" + format_report(result))
    write_json(result, args.out, config)
    print(f"\nfigures and seed-004 speed_metrics written to {args.out}")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "benchmark", "served ensemble vs model.pt in process vs fixed padding, in one run",
                 _benchmark)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="built model repository")
    p.add_argument("--grpc-url", default=None, help="benchmark a running server (host:port) instead of starting one")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--records", type=int, default=256, help="records in the mix")
    p.add_argument("--long-thread-share", type=float, default=0.3, help="share of records that are long threads")
    p.add_argument("--batch-sizes", type=int_list, default=(1, 2, 4, 8, 16, 32, 64),
                   help="in-process batch sizes, comma-separated")
    p.add_argument("--single-pairs", type=int, default=100, help="interleaved single calls at concurrency 1")
    p.add_argument("--concurrency", type=int_list, default=(8, 32), help="closed-loop levels, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--device", default="auto", help="in-process device: auto, cpu, cuda:0")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmark.json"), help="JSON figures")
