"""``tce calibrate fit|apply|report|publish``: calibration tables from and for prediction files."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command, label_overrides


def _calibrate_fit(args: argparse.Namespace) -> int:
    from tce.jobs.calibrate import fit

    calibrator = fit(args.bundle, args.predictions, method=args.method, points=args.points, tasks=args.task,
                     labels=label_overrides(args.label), label=args.version)
    methods = ", ".join(f"{t}: {c.method}" for t, c in calibrator.calibrations.items())
    print(f"calibration version {calibrator.version} written to {args.bundle}/calibration ({methods})")
    return 0


def _calibrate_apply(args: argparse.Namespace) -> int:
    from tce.jobs.calibrate import apply

    frame, notes = apply(args.calibration, args.input, args.output)
    for note in notes:
        print(f"note: {note}")
    print(f"{len(frame)} rows with calibrated columns written to {args.output}")
    return 0


def _calibrate_report(args: argparse.Namespace) -> int:
    from tce.jobs.calibrate import format_report, report

    results = report(args.calibration, args.input, args.out, labels=label_overrides(args.label), bins=args.bins)
    print(format_report(results))
    print(f"reliability diagrams and calibration_report.json written to {args.out}")
    return 0


def _calibrate_publish(args: argparse.Namespace) -> int:
    from tce.jobs.calibrate import publish
    from tce.serving.security import read_admin_key

    admin_key = read_admin_key(args.admin_key_file, required=bool(args.url)) if args.url else None
    version = publish(args.bundle, args.repository, url=args.url, admin_key=admin_key, promote=not args.candidate,
                      say=print, lock_timeout_s=args.lock_timeout)
    served = f"the server at {args.url}" if args.url else "a server that loads the repository"
    state = ("a candidate release: promote it with tce release promote" if args.candidate
             else f"released and served by {served}")
    print(f"calibrator version {version} written to {args.repository}/calibrator/{version}; {state}")
    return 0


def add(commands: Commands) -> None:
    calibrate = commands.add_parser("calibrate", help="fit, apply, report or publish calibration")
    actions = calibrate.add_subparsers(dest="action", required=True)
    label_help = "true-label column of a task (if not given: label, or label_<task> with several tasks)"
    p = add_command(actions, "fit", "fit lookup tables from a labelled predictions file into a bundle", _calibrate_fit)
    p.add_argument("--bundle", type=Path, required=True, help="bundle whose calibration/ is replaced")
    p.add_argument("--predictions", type=Path, required=True, help="labelled predictions: CSV, TSV or Parquet")
    p.add_argument("--method", choices=("isotonic", "sigmoid", "percentile"), default="isotonic",
                   help="how the tables are fitted")
    p.add_argument("--points", type=int, default=1000, help="points per lookup table")
    p.add_argument("--task", action="append", default=[], help="fit only these tasks (default: all)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help=label_help)
    p.add_argument("--version", default="", help="label put before the tables' content fingerprint in "
                   "calibration_version, e.g. 2026-11 -> 2026-11@3fa9c0e1b2d4 ('': the fingerprint alone)")
    p = add_command(actions, "apply", "add calibrated columns to a predictions file", _calibrate_apply)
    p.add_argument("--calibration", type=Path, required=True, help="a bundle or a seed calibration/ directory")
    p.add_argument("--input", type=Path, required=True, help="predictions file: CSV, TSV or Parquet")
    p.add_argument("--output", type=Path, required=True, help="file to write, format by extension")
    p = add_command(actions, "report", "ECE, MCE, Brier, log-loss raw vs calibrated, reliability PNGs",
                 _calibrate_report)
    p.add_argument("--calibration", type=Path, required=True, help="a bundle or a seed calibration/ directory")
    p.add_argument("--input", type=Path, required=True, help="labelled predictions file")
    p.add_argument("--out", type=Path, required=True, help="directory for the report and its plots")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help=label_help)
    p.add_argument("--bins", type=int, default=15, help="reliability bins")
    p = add_command(actions, "publish", "release the bundle's calibration for the current model (a new calibrator "
                    "version, checked, then served)", _calibrate_publish)
    p.add_argument("--bundle", type=Path, required=True, help="bundle with the calibration to publish")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to add it to")
    p.add_argument("--url", default=None, help="HTTP host:port of a server in explicit model-control mode")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="the server's admin key (if not given: $TCE_ADMIN_KEY_FILE, then $TCE_ADMIN_KEY)")
    p.add_argument("--candidate", action="store_true",
                   help="leave the new release a candidate (tce release promote serves it) instead of serving it")
    p.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait while another tce command changes the same repository")
