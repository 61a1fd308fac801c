"""``tce benchmark``: served ensemble vs model.pt in process vs fixed padding (make bench).

Seed 004's ``scripts/test.py`` flags are accepted under their own names: ``--checkpoint`` (the
repository, or its ``multimodal_model/1/model.pt``), ``--batch_size`` (one in-process batch size),
``--num_inference_samples`` (records in the mix), ``--device`` (in-process only: the server places
the served model), ``--model_name``, ``--split``, ``--fold``, ``--num_folds`` (they name and place
``test_metrics.json``) and ``--image_size`` (ignored, with a note: records are text and tabular).
``--instant-model`` runs ``tce.jobs.instant`` instead (issue 25: the CPU side of serving).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command, int_list, label_overrides
from tce_client import DEFAULT_MODEL

if TYPE_CHECKING:
    from tce.jobs.benchmark import BenchmarkConfig
    from tce.lib.seed_test_metrics import SeedLayout

log = logging.getLogger(__name__)


def configs(args: argparse.Namespace) -> tuple["BenchmarkConfig", "SeedLayout"]:
    """The job's ``BenchmarkConfig`` and seed 004's ``SeedLayout`` from the parsed options."""
    from tce.jobs.benchmark import BenchmarkConfig, repository_of
    from tce.lib.seed_test_metrics import SeedLayout

    config = BenchmarkConfig(repository_of(args.repository), records=args.records,
                             long_thread_share=args.long_thread_share, batch_sizes=args.batch_sizes,
                             single_pairs=args.single_pairs, concurrency=args.concurrency,
                             seconds_per_level=args.seconds, device=args.device, model=args.model,
                             labelled=args.labelled, label_columns=label_overrides(args.label))
    layout = SeedLayout(args.test_results, split=args.split, fold=args.fold, num_folds=args.num_folds,
                        model_name=args.model_name)
    return config, layout


def _instant(args: argparse.Namespace) -> int:
    """``--instant-model``: the CPU side of serving with a model that costs nothing (issue 25's table)."""
    import tempfile

    from tce.jobs.benchmark import repository_of
    from tce.jobs.instant import InstantConfig, format_instant, run_instant, write_instant_json

    if args.grpc_url:
        log.warning("note: --grpc-url is ignored with --instant-model: it serves its own copy of the repository")
    config = InstantConfig(repository_of(args.repository), records=args.records,
                           long_thread_share=args.long_thread_share, seconds=args.seconds,
                           concurrency=max(args.concurrency), preprocessor_batching=args.preprocessor_batching)
    with tempfile.TemporaryDirectory(prefix="tce-instant-") as work:
        result = run_instant(config, Path(work))
    print("\n" + format_instant(result, config))
    write_instant_json(result, config, args.out)
    print(f"\nfigures written to {args.out}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from tce.jobs.benchmark import format_quality, format_report, run_benchmark, write_json, write_seed_layout

    if args.instant_model:
        return _instant(args)
    config, layout = configs(args)
    if args.image_size is not None:
        log.warning(f"note: --image_size {args.image_size} is ignored: the ensemble reads text and tabular records")
    result = run_benchmark(config, grpc_url=args.grpc_url)
    print("\n" + format_report(result))
    print("\n" + format_quality(result))
    write_json(result, args.out, config)
    seed_file = write_seed_layout(result, config, layout)
    print(f"\nfigures and seed-004 speed_metrics written to {args.out}")
    print(f"seed 004's test_metrics.json (speed: the served ensemble at saturation) written to {seed_file}")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "benchmark", "served ensemble vs model.pt in process vs fixed padding, in one run",
                 _benchmark)
    p.add_argument("--repository", "--checkpoint", type=Path, default=DEFAULT_REPOSITORY,
                   help="built model repository, or its multimodal_model/1/model.pt (--checkpoint: seed 004's name)")
    p.add_argument("--grpc-url", default=None, help="benchmark a running server (host:port) instead of starting one")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--records", "--num_inference_samples", type=int, default=256,
                   help="records in the mix (--num_inference_samples: seed 004's name)")
    p.add_argument("--long-thread-share", type=float, default=0.3, help="share of records that are long threads")
    p.add_argument("--batch-sizes", "--batch_size", type=int_list, default=(1, 2, 4, 8, 16, 32, 64),
                   help="in-process batch sizes, comma-separated (--batch_size N: seed 004's one size)")
    p.add_argument("--single-pairs", type=int, default=100, help="interleaved single calls at concurrency 1")
    p.add_argument("--concurrency", type=int_list, default=(8, 32), help="closed-loop levels, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--device", default="auto", help="in-process device: auto, cpu, cuda, cuda:N or mps; the served "
                   "ensemble runs where the server puts it")
    p.add_argument("--instant-model", action="store_true",
                   help="serve a copy whose model.pt is a constant module of the same signature, and compare the "
                   "served steps with the same steps in process on one core (single-record requests at the "
                   "highest --concurrency, 64-record requests, a lone request's p50)")
    p.add_argument("--preprocessor-batching", action="store_true",
                   help="with --instant-model: serve the copy with a preprocessor that merges requests, as "
                        "'tce build --preprocessor-batching' builds it (for a Triton behind the gateway)")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmark.json"), help="JSON figures")
    seed = p.add_argument_group("seed 004 (test_metrics.json)")
    seed.add_argument("--labelled", type=Path, default=None, help="labelled records (CSV, TSV or Parquet, e.g. from "
                      "'tce demo-data --labels') scored through the server for the quality metrics (if not given: "
                      "each is \"NaN\")")
    seed.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN",
                      help="true-label column of a task (if not given: label, or label_<task> with several tasks)")
    seed.add_argument("--test-results", type=Path, default=Path("artifacts/test_results"),
                      help="where test_metrics.json goes: DIR/fold_<fold>/<split>/ (seed 004: outputs/test_results)")
    seed.add_argument("--split", default="val", help="the split the labelled records are: val or test")
    seed.add_argument("--fold", type=int, default=0, help="the fold the labelled records belong to")
    seed.add_argument("--num_folds", type=int, default=5, help="folds in training (checks --fold)")
    seed.add_argument("--model_name", default=None, help="model_name in test_metrics.json (if not given: the "
                      "bundle's name)")
    seed.add_argument("--image_size", type=int, default=None, help="accepted for seed 004's command lines; ignored")
