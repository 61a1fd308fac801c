"""``tce demo-data``: synthetic records in the demo schema."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import Commands, add_command


def _demo_data(args: argparse.Namespace) -> int:
    from tce.lib.demo_data import write_demo_records

    frame = write_demo_records(args.out, rows=args.rows, seed=args.seed, labels=args.labels, kind=args.kind)
    print(f"{len(frame)} records ({', '.join(frame.columns)}) written to {args.out}")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "demo-data", "write synthetic records in the demo model's schema", _demo_data)
    p.add_argument("--out", type=Path, required=True, help="file to write: .csv, .tsv or .parquet")
    p.add_argument("--rows", type=int, default=1000, help="records to write")
    p.add_argument("--seed", type=int, default=1, help="random seed (the demo model trained on seed 7)")
    p.add_argument("--labels", action="store_true", help="add true labels (label_abuse, label_reason) and a weaker "
                   "previous model's score (previous_abuse_score), for tce evaluate and tce calibrate fit")
    p.add_argument("--kind", choices=("bimodal", "trimodal"), default="bimodal",
                   help="the demo model's kind: trimodal records also carry the events text field")
