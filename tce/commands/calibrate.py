"""``tce calibrate fit|apply|report|publish|thresholds|policy``: calibration tables and the
decision policy that ships with them, from and for prediction files."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command, label_overrides

log = logging.getLogger(__name__)


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
        log.info(f"note: {note}")
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
                      say=log.info, lock_timeout_s=args.lock_timeout)
    served = f"the server at {args.url}" if args.url else "a server that loads the repository"
    state = ("a candidate release: promote it with tce release promote" if args.candidate
             else f"released and served by {served}")
    print(f"calibrator version {version} written to {args.repository}/calibrator/{version}; {state}")
    return 0


def _calibrate_thresholds(args: argparse.Namespace) -> int:
    from tce.jobs.thresholds import choose, format_choice, report_json

    result = choose(args.bundle, args.predictions, args.target, labels=label_overrides(args.label),
                    samples=args.bootstrap_samples, seed=args.seed, write=not args.dry_run)
    for choice in result.choices:
        print(format_choice(choice))
    for note in result.notes:
        log.info(f"note: {note}")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report_json(result, args.bundle, args.predictions, args.bootstrap_samples, args.seed),
                               encoding="utf-8")
        print(f"report written to {args.report}")
    if result.written:
        print(f"calibration version {result.calibrator.version} written to {args.bundle}/calibration (policy.json); "
              "tce calibrate publish serves it")
    else:
        print(f"--dry-run: nothing written (it would be calibration version {result.calibrator.version})")
    return 0


def _calibrate_policy(args: argparse.Namespace) -> int:
    from tce.jobs.thresholds import describe_policy, set_policy
    from tce_backends.bundle import Bundle

    if args.set or args.clear:
        calibrator = set_policy(args.bundle, args.set, args.clear)
        print(f"calibration version {calibrator.version} written to {args.bundle}/calibration (policy.json)")
    else:
        calibrator = Bundle.load(args.bundle).calibrator
        print(f"calibration version {calibrator.version} of {args.bundle} decides:")
    print("\n".join(describe_policy(calibrator)))
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
    p = add_command(actions, "thresholds", "choose each task's decision thresholds on calibrated scores for a "
                    "target, report what they achieve, and write them into the bundle's calibration",
                    _calibrate_thresholds)
    p.add_argument("--bundle", type=Path, required=True, help="bundle whose calibration/policy.json is written; its "
                   "tables calibrate the file's raw scores")
    p.add_argument("--predictions", type=Path, required=True, help="labelled predictions: CSV, TSV or Parquet")
    p.add_argument("--target", action="append", default=[], metavar="TASK=SPEC", required=True,
                   help="per task: [ACTION:]precision>=P or [ACTION:]recall>=R, comma-separated, one per threshold "
                        "(a bare NAME names the action below every threshold, or a multiclass task's abstain "
                        "action), e.g. abuse=allow,review:recall>=0.95,block:precision>=0.9 or "
                        "reason=precision>=0.8; or a cost matrix, cost:ACTION=COST/COST,... per true class, "
                        "actions in score order, e.g. abuse=cost:allow=0/10,review=1/1,block=4/0 "
                        "(multiclass: cost:abstain=0.3, a wrong class costs 1); quote it in a shell, where "
                        "> redirects")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help=label_help)
    p.add_argument("--bootstrap-samples", type=int, default=200, help="resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON to this file")
    p.add_argument("--dry-run", action="store_true", help="report only; write nothing into the bundle")
    p = add_command(actions, "policy", "print the bundle's decision policy, or set or clear a task's by hand",
                    _calibrate_policy)
    p.add_argument("--bundle", type=Path, required=True, help="bundle whose calibration/policy.json is read or "
                   "written")
    p.add_argument("--set", action="append", default=[], metavar="TASK=RULE",
                   help="binary: 'abuse=allow<0.5<=review<0.9<=block' (a score equal to a threshold takes the "
                        "upper action); multiclass: 'reason=argmax[,CLASS>=MINIMUM...][,ABSTAIN]' (quoted in a "
                        "shell, where < and > redirect)")
    p.add_argument("--clear", action="append", default=[], metavar="TASK",
                   help="remove a task's policy: it decides its label again")
