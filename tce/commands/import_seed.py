"""``tce import-seed``: seed artifacts (a directory or model.tar.gz) become a bundle."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tce.commands.common import Commands, add_command


def _import_seed(args: argparse.Namespace) -> int:
    from tce.seed.importer import ExtractionLimits, import_seed

    report = import_seed(args.source, args.destination, name=args.name,
                         limits=ExtractionLimits(max_bytes=args.max_seed_mib << 20), model_class=args.model_class)
    for note in report.notes:
        logging.getLogger(__name__).info(f"note: {note}")
    print(f"bundle written to {report.bundle}")
    return 0


def add(commands: Commands) -> None:
    p = add_command(commands, "import-seed", "turn seed artifacts (directory or model.tar.gz) into a bundle",
                 _import_seed)
    p.add_argument("source", type=Path, help="seed artifact directory or model.tar.gz")
    p.add_argument("destination", type=Path, help="bundle directory to write")
    p.add_argument("--name", default=None, help="bundle name (if not given: the seed's model_name or file name)")
    p.add_argument("--max-seed-mib", type=int, default=8192, help="largest size an archive may unpack to, in MiB")
    p.add_argument("--model-class", default=None, metavar="PACKAGE.MODULE:CLASS",
                   help="import model.pth (a Lightning checkpoint) with model_artifacts.pth: the nn.Module class "
                        "that built it, constructed from the artifacts' config (if not given: model.pt, TorchScript)")
