"""How ``tce`` logs: module loggers (``logging.getLogger(__name__)``) that the CLI configures
once (``configure``).

A command's results (the data a user pipes: predictions, tables, schemas) go to stdout with
``print``; everything else a command says while it works (progress, notes, warnings, what a
server is doing) is logged, to stderr:

- ``human`` (default): the message alone, one line each, as a person reads it;
- ``json``: one JSON object per line: ``time`` (UTC ISO 8601), ``level``, ``logger``,
  ``message``, and any ``extra`` fields the call gave (``logger.info(..., extra={"records": 90})``),
  plus ``exception`` with the traceback when there is one.

Third-party libraries log at WARNING and above only; ``--log-level`` sets the project's own.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import datetime, timezone
from typing import Any

FORMATS = ("human", "json")
LEVELS = ("debug", "info", "warning", "error")
PROJECT_LOGGERS = ("tce", "tce_client", "tce_backends", "tce_gateway", "tce_sagemaker")
# Attributes every LogRecord has: the rest came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        document: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for key, value in extra_fields(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(document, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """The message alone (a traceback, when there is one, after it)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return text


class StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a test's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the command down
            self.handleError(record)


def configure(log_format: str = "human", level: str = "info") -> logging.Handler:
    """Route every log record to stderr in ``log_format``; the project's loggers at ``level``.
    Calling it again replaces what an earlier call set up."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())
    return handler
