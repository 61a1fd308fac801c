"""``tce``: build, serve and call the calibrated multimodal ensemble."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence
from tce_backends.errors import TceError, UsageError
from tce_client import DEFAULT_MODEL

DEFAULT_BUNDLE = Path("artifacts/demo_bundle")
DEFAULT_REPOSITORY = Path("model_repository")


def _demo_bundle(args: argparse.Namespace) -> int:
    from .training import TrainingConfig, build_demo_bundle

    config = TrainingConfig(model_kind=args.kind, encoder=args.encoder, rows=args.rows, seed=args.seed,
                            epochs=args.epochs, calibration_method=args.calibration)
    report = build_demo_bundle(args.out, config)
    print(f"\nbundle written to {report.bundle} in {report.seconds:.1f}s; held-out test metrics:")
    print(report.table())
    return 0


def _build(args: argparse.Namespace) -> int:
    from tce_backends.bundle import Bundle

    from .repository import RepositoryOptions, write_repository

    bundle = Bundle.load(args.bundle)
    options = RepositoryOptions(ensemble_name=args.ensemble_name, max_batch_size=args.max_batch_size,
                                model_instances=args.model_instances)
    out = write_repository(bundle, args.out, options)
    print(f"model repository for bundle '{bundle.manifest.name}' written to {out} "
          f"(ensemble '{options.ensemble_name}'; libtorch host: --model-config-name=libtorch)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ipaddress

    from .gateway import Gateway, find_nginx
    from .security import read_admin_key
    from .server import ServerConfig, ServerError, Watchdog, free_ports, serve_forever

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise ServerError(f"--host {args.host!r} is not an IP address") from None
    gateway = None
    http_port, grpc_port = args.http_port, args.grpc_port
    if args.gateway:
        find_nginx()  # fail before Triton starts
        http_port, grpc_port = free_ports(2)
        host = "127.0.0.1"
    elif not loopback:
        raise ServerError(f"refusing to expose Triton itself on {args.host}: one HTTP request can crash Triton "
                          "2.51 (docs/security.md); add --gateway to serve through the checking gateway")
    else:
        host = args.host
    config = ServerConfig(args.repository, http_port, grpc_port, args.metrics_port, host=host,
                          model_control_mode=args.model_control_mode, load_models=tuple(args.load_model),
                          model_config_name=args.model_config_name, admin_key=read_admin_key(args.admin_key_file))
    if args.gateway:
        gateway = Gateway(config.http_url, config.grpc_url, address=args.host, http_port=args.http_port,
                          grpc_port=args.grpc_port)
    watchdog = Watchdog(interval_s=args.watch_interval, max_restarts=args.max_restarts) \
        if args.watch_interval > 0 else None
    return serve_forever(config, log_path=args.log, watchdog=watchdog, print_=lambda line: print(line, flush=True),
                         gateway=gateway)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.repository)


def _import_seed(args: argparse.Namespace) -> int:
    from .seed_import import ExtractionLimits, import_seed

    report = import_seed(args.source, args.destination, name=args.name,
                         limits=ExtractionLimits(max_bytes=args.max_seed_mib << 20))
    for note in report.notes:
        print(f"note: {note}")
    print(f"bundle written to {report.bundle}")
    return 0


def _label_overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        task, sep, column = pair.partition("=")
        if not sep or not task or not column:
            raise UsageError(f"--label takes TASK=COLUMN, got {pair!r}")
        overrides[task] = column
    return overrides


def _calibrate_fit(args: argparse.Namespace) -> int:
    from .calibrate import fit

    calibrator = fit(args.bundle, args.predictions, method=args.method, points=args.points, tasks=args.task,
                     labels=_label_overrides(args.label), label=args.version)
    methods = ", ".join(f"{t}: {c.method}" for t, c in calibrator.calibrations.items())
    print(f"calibration version {calibrator.version} written to {args.bundle}/calibration ({methods})")
    return 0


def _calibrate_apply(args: argparse.Namespace) -> int:
    from .calibrate import apply

    frame, notes = apply(args.calibration, args.input, args.output)
    for note in notes:
        print(f"note: {note}")
    print(f"{len(frame)} rows with calibrated columns written to {args.output}")
    return 0


def _calibrate_report(args: argparse.Namespace) -> int:
    from .calibrate import format_report, report

    results = report(args.calibration, args.input, args.out, labels=_label_overrides(args.label), bins=args.bins)
    print(format_report(results))
    print(f"reliability diagrams and calibration_report.json written to {args.out}")
    return 0


def _calibrate_publish(args: argparse.Namespace) -> int:
    from .calibrate import publish
    from .security import read_admin_key

    admin_key = read_admin_key(args.admin_key_file, required=bool(args.url)) if args.url else None
    version = publish(args.bundle, args.repository, url=args.url, admin_key=admin_key)
    state = f"loaded by the server at {args.url}" if args.url else "load it with the server's repository API"
    print(f"calibrator version {version} written to {args.repository}/calibrator/{version}; {state}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import warnings

    import pandas as pd

    from tce_client import (CalibratedClassifierClient, UnusedColumnsWarning, predictions_to_frame, to_seed_csv,
                            to_seed_json)

    from .tables import read_frame, write_frame

    frame = read_frame(args.input)
    if args.id_field and args.id_field not in frame:
        raise UsageError(f"--id-field {args.id_field!r} is not a column of {args.input}")
    with CalibratedClassifierClient(args.url, protocol=args.protocol, model=args.model) as client:
        if args.format != "table":  # checked before scoring anything
            tasks = [t.name for t in client.schema.tasks]
            if args.task is None and len(tasks) > 1:
                raise UsageError(f"--format {args.format} formats one task: add --task (one of {', '.join(tasks)})")
            if args.task is not None and args.task not in tasks:
                raise UsageError(f"--task {args.task!r} is not served; tasks: {', '.join(tasks)}")
        with warnings.catch_warnings(record=True) as unused:
            warnings.simplefilter("always", UnusedColumnsWarning)
            predictions = client.predict(frame.drop(columns=[args.id_field]) if args.id_field else frame,
                                         allow_missing_fields=args.allow_missing_columns)
        for warning in unused:
            print(f"note: {warning.message}")
    if args.format == "table":
        keep = frame[[args.id_field]] if args.id_field and args.id_field in frame else frame
        write_frame(pd.concat([keep.reset_index(drop=True), predictions_to_frame(predictions)], axis=1), args.output)
    else:
        text = (to_seed_json if args.format == "seed-json" else to_seed_csv)(predictions, args.task)
        args.output.write_text(text, encoding="utf-8")
    print(f"{len(predictions)} predictions written to {args.output}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from tce_client import CalibratedClassifierClient
    from tce_client.schema import CATEGORICAL_INPUT, NUMERIC_INPUT

    with CalibratedClassifierClient(args.url, protocol=args.protocol, model=args.model) as client:
        schema, batch = client.schema, client.max_batch_size
    if args.json:
        print(schema.to_json())
        return 0
    print(f"ensemble '{args.model}' at {client.url} ({args.protocol}), up to {batch} records per request")
    print("inputs (one row per record):")
    for field in schema.text_fields:
        print(f"  {field:<22} BYTES [1]    raw UTF-8 text (\"\" = empty)")
    if schema.numeric_features:
        print(f"  {NUMERIC_INPUT:<22} FP64  [{len(schema.numeric_features)}]    "
              f"{', '.join(schema.numeric_features)} (NaN = missing)")
    if schema.categorical_features:
        print(f"  {CATEGORICAL_INPUT:<22} BYTES [{len(schema.categorical_features)}]    "
              f"{', '.join(schema.categorical_features)} (\"\" = missing)")
    print(f"feature order of the model: {', '.join(schema.feature_order)}")
    print("tasks:")
    for task in schema.tasks:
        print(f"  {task.name:<22} {task.kind:<11} classes: {', '.join(task.classes)}")
    outputs = [f"{t.name}_{kind}" for t in schema.tasks for kind in ("raw", "calibrated", "label")]
    print(f"outputs: {', '.join(outputs)}, calibration_version, calibration_fallback")
    return 0


def _loadtest(args: argparse.Namespace) -> int:
    from .loadtest import LoadTestConfig, run

    config = LoadTestConfig(users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                            slo_file=args.slo_file, reports=args.reports, protocols=tuple(args.protocol or
                                                                                          ("http", "grpc")))
    code = run(config, repository=args.repository, http_url=args.http_url, grpc_url=args.grpc_url)
    print(f"reports: {config.reports}/loadtest.html, loadtest_stats.csv, slo_verdict.json")
    return code


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tce", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo-bundle", help="train the demo model on synthetic data and write its bundle")
    p.add_argument("--out", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--kind", choices=("bimodal", "trimodal"), default="bimodal")
    p.add_argument("--encoder", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--calibration", choices=("isotonic", "sigmoid", "percentile"), default="isotonic")
    p.set_defaults(run=_demo_bundle)

    p = commands.add_parser("build", help="turn a bundle into a Triton model repository")
    p.add_argument("bundle", type=Path)
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--model-instances", type=int, default=1)
    p.set_defaults(run=_build)

    p = commands.add_parser("serve", help="run the embedded Triton server in the foreground")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback needs --gateway (default: %(default)s)")
    p.add_argument("--gateway", action="store_true",
                   help="serve through the nginx gateway that checks requests (needs nginx with njs); Triton "
                        "then listens on 127.0.0.1 only")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none")
    p.add_argument("--load-model", action="append", default=[], help="with explicit control; '*' loads all")
    p.add_argument("--model-config-name", default="")
    p.add_argument("--log", type=Path, default=None, help="server log file (default: a temporary file)")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="file holding the admin key for model control, shared memory, logging and trace "
                        "(default: $TCE_ADMIN_KEY_FILE, $TCE_ADMIN_KEY, else a new random key per run)")
    p.add_argument("--watch-interval", type=float, default=5.0,
                   help="seconds between canary inferences that restart a broken server; 0 turns the "
                        "watchdog off (default: %(default)s)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="restarts allowed within 10 minutes before tce serve gives up with exit code 3 "
                        "(default: %(default)s)")
    p.set_defaults(run=_serve)

    p = commands.add_parser("import-seed", help="turn seed artifacts (directory or model.tar.gz) into a bundle")
    p.add_argument("source", type=Path)
    p.add_argument("destination", type=Path)
    p.add_argument("--name", default=None, help="bundle name (default: the seed's model_name or file name)")
    p.add_argument("--max-seed-mib", type=int, default=8192,
                   help="largest size an archive may unpack to, in MiB (default: %(default)s)")
    p.set_defaults(run=_import_seed)

    calibrate = commands.add_parser("calibrate", help="fit, apply, report or publish calibration")
    actions = calibrate.add_subparsers(dest="action", required=True)
    p = actions.add_parser("fit", help="fit lookup tables from a labelled predictions file into a bundle")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--predictions", type=Path, required=True, help="CSV, TSV or Parquet")
    p.add_argument("--method", choices=("isotonic", "sigmoid", "percentile"), default="isotonic")
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--task", action="append", default=[], help="fit only these tasks (default: all)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN")
    p.add_argument("--version", default="", help="label put before the tables' content fingerprint in "
                   "calibration_version, e.g. 2026-11 -> 2026-11@3fa9c0e1b2d4 (default: the fingerprint alone)")
    p.set_defaults(run=_calibrate_fit)
    p = actions.add_parser("apply", help="add calibrated columns to a predictions file")
    p.add_argument("--calibration", type=Path, required=True, help="a bundle or a seed calibration/ directory")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.set_defaults(run=_calibrate_apply)
    p = actions.add_parser("report", help="ECE, MCE, Brier, log-loss raw vs calibrated, reliability PNGs")
    p.add_argument("--calibration", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN")
    p.add_argument("--bins", type=int, default=15)
    p.set_defaults(run=_calibrate_report)
    p = actions.add_parser("publish", help="add the bundle's calibration as a new calibrator version")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--url", default=None, help="HTTP host:port of a server in explicit model-control mode")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="the server's admin key (default: $TCE_ADMIN_KEY_FILE, then $TCE_ADMIN_KEY)")
    p.set_defaults(run=_calibrate_publish)

    p = commands.add_parser("predict", help="score a CSV/TSV/Parquet file on a running server")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--url", default=None)
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--format", choices=("table", "seed-json", "seed-csv"), default="table")
    p.add_argument("--task", default=None, help="with seed formats: the task to format")
    p.add_argument("--id-field", default=None, help="with table: keep only this input column")
    p.add_argument("--allow-missing-columns", action="store_true",
                   help="score a model input missing from the file as missing in every row (default: an error "
                        "naming the column and the closest one the file has)")
    p.set_defaults(run=_predict)

    p = commands.add_parser("schema", help="print what a served ensemble takes and returns")
    p.add_argument("--url", default=None, help="server address (default: localhost:8000, or :8001 for grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: %(default)s")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the published schema as JSON")
    p.set_defaults(run=_schema)

    p = commands.add_parser("loadtest", help="locust load test with latency SLOs (exit 1 on a miss)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="served on the embedded server")
    p.add_argument("--http-url", default=None, help="test a running server instead (with --grpc-url)")
    p.add_argument("--grpc-url", default=None)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--spawn-rate", type=float, default=4.0)
    p.add_argument("--duration", default="30s")
    p.add_argument("--protocol", action="append", choices=("http", "grpc"), help="default: both")
    p.add_argument("--slo-file", type=Path, default=Path("load_tests/slo.yaml"))
    p.add_argument("--reports", type=Path, default=Path("load_tests/reports"))
    p.set_defaults(run=_loadtest)

    p = commands.add_parser("demo", help="serve a built repository, score sample records, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.set_defaults(run=_demo)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Known failures (``TceError``: a bad file, option or record, a server that will not
    start) print one line and exit 2; anything else is a bug and keeps its traceback."""
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (TceError, FileNotFoundError) as error:
        print(f"tce {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
