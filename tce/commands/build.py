"""``tce build``: a bundle becomes a Triton model repository, whole or not at all
(``tce.jobs.build``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from tce.commands.common import DEFAULT_REPOSITORY, Commands, add_command
from tce_client import DEFAULT_MODEL


def _build(args: argparse.Namespace) -> int:
    from tce.jobs.build import build
    from tce.repository.builder import RepositoryOptions

    options = RepositoryOptions(ensemble_name=args.ensemble_name, max_batch_size=args.max_batch_size,
                                model_instances=args.model_instances)
    bundle, out = build(args.bundle, args.out, options, say=print, lock_timeout_s=args.lock_timeout)
    print(f"model repository for bundle '{bundle.manifest.name}' written to {out} "
          f"(ensemble '{options.ensemble_name}'; libtorch host: --model-config-name=libtorch)")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "build", "turn a bundle into a Triton model repository", _build)
    p.add_argument("bundle", type=Path, help="bundle directory (tce demo-bundle, tce import-seed)")
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY, help="model repository to write")
    p.add_argument("--ensemble-name", default=DEFAULT_MODEL, help="name clients call the ensemble by")
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per request and per batch, every step")
    p.add_argument("--model-instances", type=int, default=1, help="instances of the model step")
    p.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait while another tce command changes the same repository")
