"""Triton's request tracing, as ``tce serve`` and the images turn it on.

Triton 2.51 (``tritonserver --help``) traces a sample of inference requests, each step of an
ensemble as a child of the request, in one of two modes:

- ``triton``: JSON written to a file (``--trace-config triton,file=PATH``) when the server
  stops, or every ``log-frequency`` traces to ``PATH.<n>``;
- ``opentelemetry``: spans exported over OTLP/HTTP (JSON) to a collector
  (``--trace-config opentelemetry,url=HOST:PORT/v1/traces``).

Global settings: ``rate`` (one request in N is traced), ``level`` (TIMESTAMPS; TENSORS also
records the tensors), ``count`` (traces in all, -1: no limit). ``TraceConfig`` checks every
setting when it is made and gives the server's arguments; ``tce trace`` reads what the
file mode writes (``tce.lib.triton_trace``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from tce_backends.errors import UsageError

MODES = ("triton", "opentelemetry")
LEVELS = ("TIMESTAMPS", "TENSORS")
# The settings Triton 2.51 knows: global ones, and each mode's own.
GLOBAL_SETTINGS = ("rate", "level", "count", "mode")
MODE_SETTINGS = {"triton": ("file", "log-frequency"),
                 "opentelemetry": ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay",
                                   "bsp_max_export_batch_size")}
DEFAULT_RATE = 1000
_URL = re.compile(r"^(https?://)?[A-Za-z0-9_.-]+(:\d{1,5})?(/[^\s,]*)?$")


class TraceError(UsageError):
    """A tracing option Triton would not take."""


def parse_setting(text: str) -> tuple[str, str, str]:
    """``MODE,SETTING=VALUE`` or ``SETTING=VALUE`` (a global one) -> (mode or "", setting, value)."""
    head, sep, value = text.partition("=")
    mode, comma, setting = head.partition(",")
    if not comma:
        mode, setting = "", head
    if not sep or not setting or not value:
        raise TraceError(f"--trace-config takes MODE,SETTING=VALUE or SETTING=VALUE, got {text!r}")
    if mode and mode not in MODES:
        raise TraceError(f"--trace-config {text!r}: the mode must be one of {', '.join(MODES)}")
    known = MODE_SETTINGS[mode] if mode else GLOBAL_SETTINGS
    if setting not in known:
        raise TraceError(f"--trace-config {text!r}: {'the ' + mode if mode else 'a global'} setting is one of "
                         f"{', '.join(known)}")
    return mode, setting, value


def _whole(value: str, what: str, least: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise TraceError(f"the trace {what} must be an integer, got {value!r}") from None
    if number < least:
        raise TraceError(f"the trace {what} must be >= {least}, got {number}")
    return number


@dataclass(frozen=True)
class TraceConfig:
    """One of ``file`` (triton mode) and ``otel_url`` (OpenTelemetry), and the sample.

    ``settings``: further ``--trace-config`` values (``MODE,SETTING=VALUE``), checked."""

    file: Path | None = None
    otel_url: str | None = None
    rate: int = DEFAULT_RATE
    level: str = "TIMESTAMPS"
    count: int = -1
    settings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.file is None) == (self.otel_url is None):
            raise TraceError("tracing needs one place for the traces: a trace file (--trace-file) or an "
                             "OpenTelemetry collector (--trace-otel), not both")
        if self.file is not None:
            object.__setattr__(self, "file", Path(self.file).expanduser().resolve())
            if not self.file.parent.is_dir():
                raise TraceError(f"the trace file's directory {self.file.parent} does not exist")
        if self.otel_url is not None and not _URL.match(self.otel_url):
            raise TraceError(f"--trace-otel must be a collector's OTLP/HTTP address, e.g. localhost:4318/v1/traces, "
                             f"got {self.otel_url!r}")
        _whole(str(self.rate), "rate", 1)
        _whole(str(self.count), "count", -1)
        if self.level not in LEVELS:
            raise TraceError(f"the trace level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        for text in self.settings:
            mode, setting, value = parse_setting(text)
            if mode and mode != self.mode:
                raise TraceError(f"--trace-config {text!r} is a setting of {mode} mode; this server traces in "
                                 f"{self.mode} mode")
            if setting in ("mode", "file", "url"):
                raise TraceError(f"--trace-config {text!r}: give it with --trace-file or --trace-otel")
            if setting in ("rate", "count", "log-frequency"):
                _whole(value, setting, -1 if setting == "count" else 0 if setting == "log-frequency" else 1)

    @property
    def mode(self) -> str:
        return "triton" if self.file is not None else "opentelemetry"

    def args(self) -> list[str]:
        """tritonserver's arguments."""
        where = ([f"--trace-config=triton,file={self.file}"] if self.file is not None else
                 ["--trace-config=mode=opentelemetry", f"--trace-config=opentelemetry,url={self.otel_url}"])
        overrides = {parse_setting(text)[1] for text in self.settings}
        sample = [f"--trace-config={name}={value}" for name, value in (
            ("level", self.level), ("rate", self.rate), ("count", self.count)) if name not in overrides]
        return [*where, *sample, *(f"--trace-config={text}" for text in self.settings)]

    def for_replica(self, index: int) -> "TraceConfig":
        """Replica ``index`` of several writes its own file (``trace-replica1.json``)."""
        if self.file is None or index == 0:
            return self
        return replace(self, file=self.file.with_name(f"{self.file.stem}-replica{index}{self.file.suffix}"))

    def describe(self) -> str:
        if self.file is not None:
            where = (f"to {self.file} (Triton writes it when it stops; with --trace-config triton,log-frequency=N, "
                     f"every N traces to {self.file}.<n>)")
        else:
            where = f"to the OpenTelemetry collector at {self.otel_url}"
        return f"tracing one request in {self.rate} ({self.level}) {where}"
