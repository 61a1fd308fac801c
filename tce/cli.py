"""``tce``: build, serve and call the calibrated multimodal ensemble.

One ``add_<command>`` per command: it declares the command's options (each with its
help and default shown) and the function that runs it. Heavy imports stay inside
the run functions, so ``tce --help`` is instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from tce_backends.errors import TceError, UsageError
from tce_client import DEFAULT_MODEL

DEFAULT_BUNDLE = Path("artifacts/demo_bundle")
DEFAULT_REPOSITORY = Path("model_repository")
PROTOCOLS = ("http", "grpc")

Commands = Any  # argparse's _SubParsersAction


def _command(commands: Commands, name: str, help: str, run: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _label_overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        task, sep, column = pair.partition("=")
        if not sep or not task or not column:
            raise UsageError(f"--label takes TASK=COLUMN, got {pair!r}")
        overrides[task] = column
    return overrides


# -- build ----------------------------------------------------------------------

def _demo_bundle(args: argparse.Namespace) -> int:
    from tce.build.training import TrainingConfig, build_demo_bundle

    config = TrainingConfig(model_kind=args.kind, encoder=args.encoder, rows=args.rows, seed=args.seed,
                            epochs=args.epochs, calibration_method=args.calibration)
    report = build_demo_bundle(args.out, config)
    print(f"\nbundle written to {report.bundle} in {report.seconds:.1f}s; held-out test metrics:")
    print(report.table())
    return 0


def add_demo_bundle(commands: Commands) -> None:
    p = _command(commands, "demo-bundle", "train the demo model on synthetic data and write its bundle",
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


def _build(args: argparse.Namespace) -> int:
    from tce.build.repository import RepositoryOptions, write_repository
    from tce_backends.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    options = RepositoryOptions(ensemble_name=args.ensemble_name, max_batch_size=args.max_batch_size,
                                model_instances=args.model_instances)
    out = write_repository(bundle, args.out, options, say=print)
    print(f"model repository for bundle '{bundle.manifest.name}' written to {out} "
          f"(ensemble '{options.ensemble_name}'; libtorch host: --model-config-name=libtorch)")
    return 0


def add_build(commands: Commands) -> None:
    p = _command(commands, "build", "turn a bundle into a Triton model repository", _build)
    p.add_argument("bundle", type=Path, help="bundle directory (tce demo-bundle, tce import-seed)")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository to write")
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL, help="name clients call the ensemble by")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per request and per batch, every step")
    p.add_argument("--model-instances", type=int, default=1, help="instances of the model step")


def _package_sagemaker(args: argparse.Namespace) -> int:
    from tce.build.repository import RepositoryOptions
    from tce.serving.sagemaker import package_sagemaker

    out = package_sagemaker(args.bundle, args.out, handler=args.handler,
                            options=RepositoryOptions(ensemble_name=args.ensemble_name))
    what = (f"Triton model repository; serve it with the server image's 'serve' command and "
            f"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME={args.ensemble_name}" if args.handler == "triton"
            else "bundle with code/inference.py for SageMaker's PyTorch serving containers")
    print(f"{out} written ({out.stat().st_size / 1e6:.1f} MB): {what}")
    return 0


def add_package_sagemaker(commands: Commands) -> None:
    from tce.serving.sagemaker import HANDLERS

    p = _command(commands, "package-sagemaker", "package a bundle as a SageMaker model archive (model.tar.gz)",
                 _package_sagemaker)
    p.add_argument("bundle", type=Path, help="bundle directory (tce demo-bundle, tce import-seed)")
    p.add_argument("out", type=Path, help="archive to write, e.g. model.tar.gz")
    p.add_argument("--handler", choices=HANDLERS, default="triton",
                   help="triton: the model repository for Triton's SageMaker mode; pytorch: the bundle with seed "
                        "003's model_fn/input_fn/predict_fn/output_fn for SageMaker's PyTorch containers")
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL, help="with triton: the ensemble's name")


def _import_seed(args: argparse.Namespace) -> int:
    from tce.seed.importer import ExtractionLimits, import_seed

    report = import_seed(args.source, args.destination, name=args.name,
                         limits=ExtractionLimits(max_bytes=args.max_seed_mib << 20), model_class=args.model_class)
    for note in report.notes:
        print(f"note: {note}")
    print(f"bundle written to {report.bundle}")
    return 0


def add_import_seed(commands: Commands) -> None:
    p = _command(commands, "import-seed", "turn seed artifacts (directory or model.tar.gz) into a bundle",
                 _import_seed)
    p.add_argument("source", type=Path, help="seed artifact directory or model.tar.gz")
    p.add_argument("destination", type=Path, help="bundle directory to write")
    p.add_argument("--name", default=None, help="bundle name (if not given: the seed's model_name or file name)")
    p.add_argument("--max-seed-mib", type=int, default=8192, help="largest size an archive may unpack to, in MiB")
    p.add_argument("--model-class", default=None, metavar="PACKAGE.MODULE:CLASS",
                   help="import model.pth (a Lightning checkpoint) with model_artifacts.pth: the nn.Module class "
                        "that built it, constructed from the artifacts' config (if not given: model.pt, TorchScript)")


# -- serving --------------------------------------------------------------------

def _serve(args: argparse.Namespace) -> int:
    import ipaddress

    from tce.serving.security import read_admin_key
    from tce.serving.server import ServerConfig, ServerError, Watchdog, free_ports, serve_forever
    from tce_gateway.config import GatewayConfig
    from tce_gateway.launcher import GatewayError, find_nginx

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise ServerError(f"--host {args.host!r} is not an IP address") from None
    gateway = None
    use_gateway = args.gateway or args.sagemaker or args.replicas > 1
    if use_gateway:
        try:
            find_nginx()  # fail before Triton starts
        except GatewayError as missing:
            raise ServerError(str(missing)) from None
        gateway = GatewayConfig(args.host, args.http_port, args.grpc_port,
                                args.sagemaker_port if args.sagemaker else None, door_workers=args.gateway_workers)
        http_port, grpc_port, host = *free_ports(2), "127.0.0.1"
    elif not loopback:
        raise ServerError(f"refusing to expose Triton itself on {args.host}: one HTTP request can crash Triton "
                          "2.51 (docs/security.md); add --gateway to serve through the checking gateway")
    else:
        http_port, grpc_port, host = args.http_port, args.grpc_port, args.host
    operator_key = read_admin_key(args.admin_key_file)
    config = ServerConfig(args.repository, http_port, grpc_port, args.metrics_port, host=host,
                          model_control_mode=args.model_control_mode, load_models=tuple(args.load_model),
                          model_config_name=args.model_config_name, admin_key=operator_key)
    watchdog = Watchdog(interval_s=args.watch_interval, max_restarts=args.max_restarts)
    return serve_forever(config, log_path=args.log, watchdog=watchdog, print_=lambda line: print(line, flush=True),
                         gateway=gateway, replicas=args.replicas, operator_key=operator_key, default_model=args.model)


def add_serve(commands: Commands) -> None:
    p = _command(commands, "serve", "run the embedded Triton server in the foreground", _serve)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --gateway")
    p.add_argument("--gateway", action="store_true",
                   help="serve through the gateway that checks and rebuilds every request (needs nginx); Triton "
                        "then listens on 127.0.0.1 only")
    p.add_argument("--replicas", type=int, default=1,
                   help="Triton processes behind the gateway (implies --gateway): a request one of them dropped by "
                        "dying is sent to another")
    p.add_argument("--gateway-workers", type=int, default=2, help="door processes of the gateway")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none",
                   help="explicit: models are loaded and unloaded through the (admin-key) repository API")
    p.add_argument("--load-model", action="append", default=[],
                   help="with explicit control, a model to load at start; '*' loads all")
    p.add_argument("--model-config-name", default="", help="alternative config name, e.g. libtorch")
    p.add_argument("--sagemaker", action="store_true",
                   help="also answer SageMaker's protocol (GET /ping, POST /invocations for --model) on "
                        "--sagemaker-port of --host, through the gateway (implies --gateway)")
    p.add_argument("--sagemaker-port", type=int, default=8080, help="port of the SageMaker protocol")
    p.add_argument("--model", default=DEFAULT_MODEL, help="with --sagemaker: the model /invocations runs")
    p.add_argument("--log", type=Path, default=None, help="server log file (if not given: a temporary file)")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="file holding the admin key for model control, shared memory, logging and trace "
                        "(if not given: $TCE_ADMIN_KEY_FILE, $TCE_ADMIN_KEY, else a new random key per run)")
    p.add_argument("--watch-interval", type=float, default=5.0,
                   help="seconds between canary inferences; 0 turns the canary off (a Triton that exits is still "
                        "restarted)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="restarts of one Triton allowed within 10 minutes before tce serve gives up with exit code 3")


def _demo(args: argparse.Namespace) -> int:
    from tce.serving.demo import run_demo

    return run_demo(args.repository)


def add_demo(commands: Commands) -> None:
    p = _command(commands, "demo", "serve a built repository, score sample records, stop", _demo)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to serve")


def _loadtest(args: argparse.Namespace) -> int:
    from tce.serving.loadtest import LoadTestConfig, run

    config = LoadTestConfig(users=args.users, spawn_rate=args.spawn_rate, duration=args.duration,
                            slo_file=args.slo_file, reports=args.reports, protocols=tuple(args.protocol or PROTOCOLS))
    code = run(config, repository=args.repository, http_url=args.http_url, grpc_url=args.grpc_url)
    print(f"reports: {config.reports}/loadtest.html, loadtest_stats.csv, slo_verdict.json")
    return code


def add_loadtest(commands: Commands) -> None:
    p = _command(commands, "loadtest", "locust load test with latency SLOs (exit 1 on a miss)", _loadtest)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="served on the embedded server")
    p.add_argument("--http-url", default=None, help="test a running server instead (with --grpc-url)")
    p.add_argument("--grpc-url", default=None, help="gRPC host:port of the running server")
    p.add_argument("--users", type=int, default=4, help="concurrent locust users per protocol")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument("--duration", default="30s", help="run time, e.g. 30s, 2m")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS, help="protocol to test (if not given: both)")
    p.add_argument("--slo-file", type=Path, default=Path("load_tests/slo.yaml"), help="latency SLOs to check")
    p.add_argument("--reports", type=Path, default=Path("load_tests/reports"), help="where reports are written")


# -- calibration ----------------------------------------------------------------

def _calibrate_fit(args: argparse.Namespace) -> int:
    from tce.calibration.calibrate import fit

    calibrator = fit(args.bundle, args.predictions, method=args.method, points=args.points, tasks=args.task,
                     labels=_label_overrides(args.label), label=args.version)
    methods = ", ".join(f"{t}: {c.method}" for t, c in calibrator.calibrations.items())
    print(f"calibration version {calibrator.version} written to {args.bundle}/calibration ({methods})")
    return 0


def _calibrate_apply(args: argparse.Namespace) -> int:
    from tce.calibration.calibrate import apply

    frame, notes = apply(args.calibration, args.input, args.output)
    for note in notes:
        print(f"note: {note}")
    print(f"{len(frame)} rows with calibrated columns written to {args.output}")
    return 0


def _calibrate_report(args: argparse.Namespace) -> int:
    from tce.calibration.calibrate import format_report, report

    results = report(args.calibration, args.input, args.out, labels=_label_overrides(args.label), bins=args.bins)
    print(format_report(results))
    print(f"reliability diagrams and calibration_report.json written to {args.out}")
    return 0


def _calibrate_publish(args: argparse.Namespace) -> int:
    from tce.calibration.calibrate import publish
    from tce.serving.security import read_admin_key

    admin_key = read_admin_key(args.admin_key_file, required=bool(args.url)) if args.url else None
    version = publish(args.bundle, args.repository, url=args.url, admin_key=admin_key)
    state = f"loaded by the server at {args.url}" if args.url else "load it with the server's repository API"
    print(f"calibrator version {version} written to {args.repository}/calibrator/{version}; {state}")
    return 0


def add_calibrate(commands: Commands) -> None:
    calibrate = commands.add_parser("calibrate", help="fit, apply, report or publish calibration")
    actions = calibrate.add_subparsers(dest="action", required=True)
    label_help = "true-label column of a task (if not given: label, or label_<task> with several tasks)"
    p = _command(actions, "fit", "fit lookup tables from a labelled predictions file into a bundle", _calibrate_fit)
    p.add_argument("--bundle", type=Path, required=True, help="bundle whose calibration/ is replaced")
    p.add_argument("--predictions", type=Path, required=True, help="labelled predictions: CSV, TSV or Parquet")
    p.add_argument("--method", choices=("isotonic", "sigmoid", "percentile"), default="isotonic",
                   help="how the tables are fitted")
    p.add_argument("--points", type=int, default=1000, help="points per lookup table")
    p.add_argument("--task", action="append", default=[], help="fit only these tasks (default: all)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help=label_help)
    p.add_argument("--version", default="", help="label put before the tables' content fingerprint in "
                   "calibration_version, e.g. 2026-11 -> 2026-11@3fa9c0e1b2d4 ('': the fingerprint alone)")
    p = _command(actions, "apply", "add calibrated columns to a predictions file", _calibrate_apply)
    p.add_argument("--calibration", type=Path, required=True, help="a bundle or a seed calibration/ directory")
    p.add_argument("--input", type=Path, required=True, help="predictions file: CSV, TSV or Parquet")
    p.add_argument("--output", type=Path, required=True, help="file to write, format by extension")
    p = _command(actions, "report", "ECE, MCE, Brier, log-loss raw vs calibrated, reliability PNGs",
                 _calibrate_report)
    p.add_argument("--calibration", type=Path, required=True, help="a bundle or a seed calibration/ directory")
    p.add_argument("--input", type=Path, required=True, help="labelled predictions file")
    p.add_argument("--out", type=Path, required=True, help="directory for the report and its plots")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN", help=label_help)
    p.add_argument("--bins", type=int, default=15, help="reliability bins")
    p = _command(actions, "publish", "add the bundle's calibration as a new calibrator version", _calibrate_publish)
    p.add_argument("--bundle", type=Path, required=True, help="bundle with the calibration to publish")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository to add it to")
    p.add_argument("--url", default=None, help="HTTP host:port of a server in explicit model-control mode")
    p.add_argument("--admin-key-file", type=Path, default=None,
                   help="the server's admin key (if not given: $TCE_ADMIN_KEY_FILE, then $TCE_ADMIN_KEY)")


# -- jobs -----------------------------------------------------------------------

def _predict(args: argparse.Namespace) -> int:
    from tce.jobs.predict import PredictJob, run_predict

    job = PredictJob(args.input, args.output, url=args.url, protocol=args.protocol, model=args.model,
                     format=args.format, task=args.task, id_field=args.id_field, keep_columns=args.keep_columns,
                     allow_missing_columns=args.allow_missing_columns, chunk_rows=args.chunk_rows,
                     max_in_flight=args.max_in_flight, restart=args.restart)
    result = run_predict(job)
    if result.finished_before:
        print(f"{args.output} already holds this job's finished output; nothing to do (--restart scores again)")
    else:
        print(f"{result.rows} predictions written to {result.path} (this run scored {result.scored} records in "
              f"{result.seconds:.1f} s, {result.records_per_s:.1f} records/s)")
    return 0


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    """Options every batch job through the server shares (predict, evaluate)."""
    p.add_argument("--url", default=None, help="server address (if not given: localhost:8001, or :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="protocol to call the server with")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--id-field", default=None, help="ID column, written beside the predictions")
    p.add_argument("--allow-missing-columns", action="store_true",
                   help="score a model input missing from the file as missing in every row (default: an error "
                        "naming the column and the closest one the file has)")
    p.add_argument("--chunk-rows", type=int, default=1024,
                   help="rows read, scored and saved at a time; a rerun after a failure continues from the last "
                        "saved chunk")
    p.add_argument("--max-in-flight", type=int, default=8, help="requests in flight at once")
    p.add_argument("--restart", action="store_true", help="discard a previous run's saved chunks and start over")


def add_predict(commands: Commands) -> None:
    from tce.jobs.predict import FORMATS

    p = _command(commands, "predict", "batch inference (seed 001): score CSV/TSV/Parquet files on a running "
                 "server into an output directory; resumable", _predict)
    p.add_argument("--input", type=Path, required=True,
                   help="records to score: a CSV, TSV or Parquet file, or a directory of them")
    p.add_argument("--output", type=Path, required=True,
                   help="directory for inference_predictions.<format>, _SUCCESS and _HEALTH")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (if not given: the input's); seed-json/seed-csv: seed 000's score fields")
    p.add_argument("--task", default=None, help="with seed formats: the task to format")
    p.add_argument("--keep-columns", action="store_true", help="keep every input column beside the predictions")
    _add_batch_options(p)


def _evaluate(args: argparse.Namespace) -> int:
    from tce.jobs.evaluate import EvaluateJob, run_evaluate

    job = EvaluateJob(args.out, input=args.input, predictions=args.predictions, bundle=args.bundle,
                      labels=_label_overrides(args.label),
                      id_field=args.id_field, previous_score_field=args.previous_score_field,
                      compare_task=args.compare_task, bins=args.bins, bootstrap_samples=args.bootstrap_samples,
                      url=args.url, protocol=args.protocol, model=args.model, format=args.format,
                      allow_missing_columns=args.allow_missing_columns, chunk_rows=args.chunk_rows,
                      max_in_flight=args.max_in_flight, restart=args.restart)
    report = run_evaluate(job)
    print(report.summary, end="")
    print(f"\nmetrics.json, metrics_summary.txt, plots and predictions of {report.records} records written to "
          f"{report.out}")
    return 0


def add_evaluate(commands: Commands) -> None:
    from tce.jobs.predict import TABLE_FORMATS

    p = _command(commands, "evaluate", "model evaluation (seed 002): raw and calibrated metrics per task, plots, "
                 "and comparison with a previous model", _evaluate)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="labelled records to score on a running server: a CSV, TSV or "
                        "Parquet file, or a directory of them")
    source.add_argument("--predictions", type=Path, help="an already scored, labelled predictions file "
                        "(prob_class_<i> and calibrated_prob_class_<i> columns)")
    p.add_argument("--out", type=Path, required=True, help="directory for metrics, plots and predictions")
    p.add_argument("--bundle", type=Path, default=None, help="with --predictions: the bundle whose tasks and class "
                   "names the file holds (if not given: tasks from the column names, labels as class indices)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN",
                   help="true-label column of a task (if not given: label, or label_<task> with several tasks)")
    p.add_argument("--previous-score-field", default=None,
                   help="a previous model's class-1 score column: compare the two models")
    p.add_argument("--compare-task", default=None, help="the binary task the previous score belongs to "
                   "(needed when there are several)")
    p.add_argument("--bins", type=int, default=15, help="reliability bins (ECE, diagrams)")
    p.add_argument("--bootstrap-samples", type=int, default=200, help="resamples for the comparison's intervals")
    p.add_argument("--format", choices=TABLE_FORMATS, default=None, help="predictions file format (if not given: "
                   "the input's)")
    _add_batch_options(p)


def _demo_data(args: argparse.Namespace) -> int:
    from tce.build.demo_data import write_demo_records

    frame = write_demo_records(args.out, rows=args.rows, seed=args.seed, labels=args.labels, kind=args.kind)
    print(f"{len(frame)} records ({', '.join(frame.columns)}) written to {args.out}")
    return 0


def add_demo_data(commands: Commands) -> None:
    p = _command(commands, "demo-data", "write synthetic records in the demo model's schema", _demo_data)
    p.add_argument("--out", type=Path, required=True, help="file to write: .csv, .tsv or .parquet")
    p.add_argument("--rows", type=int, default=1000, help="records to write")
    p.add_argument("--seed", type=int, default=1, help="random seed (the demo model trained on seed 7)")
    p.add_argument("--labels", action="store_true", help="add true labels (label_abuse, label_reason) and a weaker "
                   "previous model's score (previous_abuse_score), for tce evaluate and tce calibrate fit")
    p.add_argument("--kind", choices=("bimodal", "trimodal"), default="bimodal",
                   help="the demo model's kind: trimodal records also carry the events text field")


def _schema(args: argparse.Namespace) -> int:
    from tce.jobs.schema import describe_schema

    print(describe_schema(args.url, protocol=args.protocol, model=args.model, as_json=args.json))
    return 0


def add_schema(commands: Commands) -> None:
    p = _command(commands, "schema", "print what a served ensemble takes and returns", _schema)
    p.add_argument("--url", default=None, help="server address (if not given: localhost:8000, or :8001 for grpc)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="http", help="protocol to call the server with")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--json", action="store_true", help="print the published schema as JSON")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


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


def add_benchmark(commands: Commands) -> None:
    p = _command(commands, "benchmark", "served ensemble vs model.pt in process vs fixed padding, in one run",
                 _benchmark)
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="built model repository")
    p.add_argument("--grpc-url", default=None, help="benchmark a running server (host:port) instead of starting one")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--records", type=int, default=256, help="records in the mix")
    p.add_argument("--long-thread-share", type=float, default=0.3, help="share of records that are long threads")
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 2, 4, 8, 16, 32, 64),
                   help="in-process batch sizes, comma-separated")
    p.add_argument("--single-pairs", type=int, default=100, help="interleaved single calls at concurrency 1")
    p.add_argument("--concurrency", type=_int_list, default=(8, 32), help="closed-loop levels, comma-separated")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--device", default="auto", help="in-process device: auto, cpu, cuda:0")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmark.json"), help="JSON figures")


def _capacity(args: argparse.Namespace) -> int:
    from tce.jobs.capacity import load_points, plan_capacity

    print(plan_capacity(load_points(args.benchmark), args.rate, args.p99_ms, args.headroom, args.spare).describe())
    return 0


def add_capacity(commands: Commands) -> None:
    p = _command(commands, "capacity", "replicas for a request rate and p99 SLO, from make bench figures",
                 _capacity)
    p.add_argument("--benchmark", type=Path, default=Path("artifacts/benchmark.json"), help="tce benchmark output")
    p.add_argument("--rate", type=float, required=True, help="single-record requests per second to serve")
    p.add_argument("--p99-ms", type=float, required=True, help="p99 latency SLO in milliseconds")
    p.add_argument("--headroom", type=float, default=0.8, help="share of a replica's measured rate to plan with")
    p.add_argument("--spare", type=int, default=1, help="replicas beyond the need (rolling updates, drains)")


COMMANDS: tuple[Callable[[Commands], None], ...] = (
    add_demo_bundle, add_demo_data, add_build, add_serve, add_import_seed, add_package_sagemaker, add_calibrate,
    add_predict, add_evaluate, add_schema, add_loadtest, add_demo, add_benchmark, add_capacity,
)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tce", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
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
