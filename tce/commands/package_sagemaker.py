"""``tce package-sagemaker``: a bundle as the model archive a SageMaker endpoint loads."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import Commands, add_command
from tce_client import DEFAULT_MODEL


def _package_sagemaker(args: argparse.Namespace) -> int:
    from tce.jobs.sagemaker import package_sagemaker
    from tce.repository.builder import RepositoryOptions

    out = package_sagemaker(args.bundle, args.out, handler=args.handler,
                            options=RepositoryOptions(ensemble_name=args.ensemble_name))
    what = (f"Triton model repository; serve it with the server image's 'serve' command and "
            f"SAGEMAKER_TRITON_DEFAULT_MODEL_NAME={args.ensemble_name}" if args.handler == "triton"
            else "bundle with code/inference.py for SageMaker's PyTorch serving containers")
    print(f"{out} written ({out.stat().st_size / 1e6:.1f} MB): {what}")
    return 0


def add(commands: Commands) -> None:
    from tce.jobs.sagemaker import HANDLERS

    p = add_command(commands, "package-sagemaker", "package a bundle as a SageMaker model archive (model.tar.gz)",
                 _package_sagemaker)
    p.add_argument("bundle", type=Path, help="bundle directory (tce demo-bundle, tce import-seed)")
    p.add_argument("out", type=Path, help="archive to write, e.g. model.tar.gz")
    p.add_argument("--handler", choices=HANDLERS, default="triton",
                   help="triton: the model repository for Triton's SageMaker mode; pytorch: the bundle with seed "
                        "003's model_fn/input_fn/predict_fn/output_fn for SageMaker's PyTorch containers")
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL, help="with triton: the ensemble's name")
