"""Command-line options of the gateway that ``tce serve --gateway`` shares (light imports:
``tce --help`` reads them)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping

from tce_gateway.config import PredictionLogConfig


def _share(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], e.g. 0.1, got {text!r}") from None


def _from(environ: object, variable: str, value: str = "") -> str:
    return f"; ${variable}{value} sets it" if environ is os.environ else ""


def add_prediction_log_options(p: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The prediction log's options (``tce serve --gateway`` takes the same ones)."""
    p.add_argument("--prediction-log", type=Path, default=environ.get("TCE_PREDICTION_LOG") or None, metavar="DIR",
                   help="log a sample of answered requests (ids, scores, versions) as JSON lines in DIR, for "
                        "labels that arrive later (tce evaluate --predictions DIR --labels FILE)"
                        + _from(environ, "TCE_PREDICTION_LOG"))
    p.add_argument("--prediction-log-rate", type=_share, default=environ.get("TCE_PREDICTION_LOG_RATE") or "1",
                   metavar="SHARE", help="share of answered requests logged, in (0, 1]"
                   + _from(environ, "TCE_PREDICTION_LOG_RATE"))
    p.add_argument("--prediction-log-inputs", action="store_true",
                   default=environ.get("TCE_PREDICTION_LOG_INPUTS", "") in ("1", "true", "yes"),
                   help="also log each record's inputs (they may hold personal data)"
                   + _from(environ, "TCE_PREDICTION_LOG_INPUTS", "=1"))
    p.add_argument("--prediction-log-max-bytes", type=int, default=PredictionLogConfig.max_file_bytes,
                   metavar="BYTES", help="a worker's file is rotated past this size")
    p.add_argument("--prediction-log-keep", type=int, default=PredictionLogConfig.keep_files, metavar="FILES",
                   help="rotated files kept per door worker (older ones are removed)")


def prediction_log_config(args: argparse.Namespace) -> PredictionLogConfig | None:
    """The options' settings (ValueError naming the one at fault), or None when the log is off."""
    if args.prediction_log is None:
        return None
    return PredictionLogConfig(str(args.prediction_log), rate=float(args.prediction_log_rate),
                               inputs=args.prediction_log_inputs, max_file_bytes=args.prediction_log_max_bytes,
                               keep_files=args.prediction_log_keep)
