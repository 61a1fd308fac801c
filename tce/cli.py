"""``tce``: build, serve and call the calibrated multimodal ensemble.

The commands live in ``tce.commands`` (one module each); this module builds the
parser from them and runs one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from tce.commands import MODULES
from tce.commands.common import (
    DEFAULT_BUNDLE,
    DEFAULT_REPOSITORY,
    Commands,
    configure_logging,
    logging_options,
    version,
)
from tce_backends.errors import TceError

__all__ = ["COMMANDS", "DEFAULT_BUNDLE", "DEFAULT_REPOSITORY", "main", "parser"]
COMMANDS: tuple[Callable[[Commands], None], ...] = tuple(module.add for module in MODULES)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tce", description=__doc__.split("\n")[0], parents=[logging_options(top=True)])
    root.add_argument("--version", action="version", version=version())
    commands = root.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Known failures (``TceError``: a bad file, option or record, a server that will not
    start) are one logged line and exit 2; anything else is a bug and keeps its traceback."""
    args = parser().parse_args(argv)
    try:
        configure_logging(args)
        return int(args.run(args) or 0)
    except (TceError, FileNotFoundError) as error:
        logging.getLogger(__name__).error(f"tce {args.command}: error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
