"""``tce``: build, serve and call the calibrated multimodal ensemble."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

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
    from .server import ServerConfig, serve_forever

    config = ServerConfig(args.repository, args.http_port, args.grpc_port, args.metrics_port, host=args.host,
                          model_control_mode=args.model_control_mode, load_models=tuple(args.load_model),
                          model_config_name=args.model_config_name)
    return serve_forever(config, log_path=args.log)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.repository)


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
    p.add_argument("--ensemble-name", default="calibrated_ensemble")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--model-instances", type=int, default=1)
    p.set_defaults(run=_build)

    p = commands.add_parser("serve", help="run the embedded Triton server in the foreground")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-control-mode", choices=("none", "explicit"), default="none")
    p.add_argument("--load-model", action="append", default=[], help="with explicit control; '*' loads all")
    p.add_argument("--model-config-name", default="")
    p.add_argument("--log", type=Path, default=None, help="server log file (default: a temporary file)")
    p.set_defaults(run=_serve)

    p = commands.add_parser("demo", help="serve a built repository, score sample records, stop")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.set_defaults(run=_demo)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Exception as error:  # a clear one-line error for known failures
        from tce_backends.errors import BundleError

        from .server import ServerError

        if isinstance(error, (BundleError, ServerError, ValueError, FileNotFoundError)):
            print(f"tce {args.command}: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
