"""``tce demo-bundle``: train the demo model on synthetic data and write its bundle."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import DEFAULT_BUNDLE, Commands, add_command


def _demo_bundle(args: argparse.Namespace) -> int:
    from tce.trainer.training import TrainingConfig, build_demo_bundle

    config = TrainingConfig(model_kind=args.kind, encoder=args.encoder, rows=args.rows, seed=args.seed,
                            epochs=args.epochs, calibration_method=args.calibration)
    report = build_demo_bundle(args.out, config, log=logging.getLogger(__name__).info)
    print(f"\nbundle written to {report.bundle} in {report.seconds:.1f}s; held-out test metrics:")
    print(report.table())
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "demo-bundle", "train the demo model on synthetic data and write its bundle",
                 _demo_bundle)
    p.add_argument("--out", type=Path, default=DEFAULT_BUNDLE, help="bundle directory to write")
    p.add_argument("--kind", choices=("bimodal", "trimodal"), default="bimodal",
                   help="dialogue only, or dialogue and events text fields (beside the tabular features)")
    p.add_argument("--encoder", choices=("minilm", "tiny"), default="minilm",
                   help="the packaged MiniLM, or a tiny random BERT for tests")
    p.add_argument("--rows", type=int, default=3000, help="synthetic records to train, calibrate and test on")
    p.add_argument("--seed", type=int, default=7, help="random seed (builds are deterministic)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs of the heads")
    p.add_argument("--calibration", choices=("isotonic", "sigmoid", "percentile"), default="isotonic",
                   help="how the lookup tables are fitted")
