"""What every command module shares: how a command is declared, default paths, and options
used by more than one command."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from tce.lib.rejects import DEFAULT_REJECT_LIMIT, RejectLimit
from tce.lib.seed_settings import SeedSettings, choose
from tce_backends.errors import UsageError
from tce_client import DEFAULT_MODEL

DEFAULT_BUNDLE = Path("artifacts/demo_bundle")
DEFAULT_REPOSITORY = Path("model_repository")
PROTOCOLS = ("http", "grpc")

Commands = Any  # argparse's _SubParsersAction


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (a required option,
    or one whose absence means "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, [], ()) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def logging_options(top: bool) -> argparse.ArgumentParser:
    """--log-format and --log-level, taken before the command (``top``: with their defaults) or
    after it (no defaults there, so they do not undo what was given before)."""
    from tce.lib.logs import FORMATS, LEVELS

    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("logging")
    group.add_argument("--log-format", choices=FORMATS,
                       default=os.environ.get("TCE_LOG_FORMAT", "human") if top else argparse.SUPPRESS,
                       help="how notes, progress and warnings are written to stderr: human lines, or json (one "
                            "object per line: time, level, logger, message and extra fields); results stay on "
                            "stdout (if not given: $TCE_LOG_FORMAT, else human)")
    group.add_argument("--log-level", choices=LEVELS,
                       default=os.environ.get("TCE_LOG_LEVEL", "info") if top else argparse.SUPPRESS,
                       help="the least severe message written (if not given: $TCE_LOG_LEVEL, else info)")
    return options


def configure_logging(args: argparse.Namespace) -> None:
    """The CLI's one logging set-up (``tce.lib.logs``), from --log-format and --log-level."""
    from tce.lib.logs import FORMATS, LEVELS, configure

    if args.log_format not in FORMATS or args.log_level not in LEVELS:  # from the environment
        raise UsageError(f"$TCE_LOG_FORMAT must be one of {', '.join(FORMATS)} and $TCE_LOG_LEVEL one of "
                         f"{', '.join(LEVELS)}, got {args.log_format!r} and {args.log_level!r}")
    configure(args.log_format, args.log_level)


def add_command(commands: Commands, name: str, help: str, run: Callable[[argparse.Namespace], int]
                ) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter,
                                 parents=[logging_options(top=False)])
    parser.set_defaults(run=run)
    return parser


def label_overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        task, sep, column = pair.partition("=")
        if not sep or not task or not column:
            raise UsageError(f"--label takes TASK=COLUMN, got {pair!r}")
        overrides[task] = column
    return overrides


def add_batch_options(p: argparse.ArgumentParser) -> None:
    """Options every batch job through the server shares (predict, evaluate)."""
    p.add_argument("--url", default=None, help="server address (if not given: localhost:8001, or :8000 for http)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="protocol to call the server with")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    p.add_argument("--id-field", default=None, help="ID column, written beside the predictions and the rejected "
                   "records (if not given: the environment's ID_FIELD, as seed 001 reads it)")
    p.add_argument("--allow-missing-columns", action="store_true",
                   help="score a model input missing from the file as missing in every row (default: an error "
                        "naming the column and the closest one the file has)")
    p.add_argument("--chunk-rows", type=int, default=1024,
                   help="rows read, scored and saved at a time; a rerun after a failure continues from the last "
                        "saved chunk")
    p.add_argument("--max-in-flight", type=int, default=8,
                   help="most requests in flight at once; fewer while the server refuses requests for load")
    p.add_argument("--batch-size", type=int, default=None,
                   help="records per request, at most the server's largest batch (if not given: the environment's "
                        "BATCH_SIZE, as seed 001 reads it, else the server's largest batch)")
    p.add_argument("--max-rejects", default=DEFAULT_REJECT_LIMIT, metavar="LIMIT",
                   help="records that cannot be scored (text that is not UTF-8, a number that does not parse) are "
                        "left out and listed in <stem>_rejects.<format> beside the output; the job fails, with no "
                        "marker, only past this many: a count (10), a percentage (0.5%%) or a fraction (0.005); "
                        "the default allows whichever of the two is more")
    p.add_argument("--restart", action="store_true", help="discard a previous run's saved chunks and start over")


def apply_seed_settings(args: argparse.Namespace, note: Callable[[str], None] | None = None) -> SeedSettings:
    """Fill the batch options not given on the command line from the seeds' environment
    variables (ID_FIELD, BATCH_SIZE), parse --max-rejects, and note the settings the server
    decides (DEVICE, ACCELERATOR, NUM_WORKERS). Returns the settings read."""
    settings = SeedSettings.from_environ(os.environ)
    args.id_field_option = "--id-field" if args.id_field is not None else "ID_FIELD"  # how the user named it
    args.id_field = choose(args.id_field, settings.id_field)
    args.batch_size = choose(args.batch_size, settings.batch_size)
    args.max_rejects = RejectLimit.parse(args.max_rejects)
    line = settings.note()
    if line:
        (note or logging.getLogger(__name__).info)(line)
    return settings


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def version() -> str:
    """This project's version, and the Triton it serves with."""
    from importlib import metadata

    from tce.serving.server import TRITON_VERSION

    try:
        own = metadata.version("triton-calibrated-ensemble")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        own = "unknown (not installed)"
    return f"tce {own} (embedded Triton {TRITON_VERSION})"
