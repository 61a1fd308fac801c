"""SLO config, an exact latency histogram, and the end-of-run verdict.

Locust's own percentiles round response times to whole milliseconds below 100 ms,
which is too coarse for a 20 ms SLO; ``LatencyHistogram`` counts latencies at 1 µs
resolution, so its percentiles are exact to the microsecond with bounded memory.

Two kinds of latency SLO: absolute milliseconds per protocol (``protocols``, for
``make loadtest`` on a known machine), and ``max_p99_over_idle_p50``, the p99 under
load over the p50 of single requests to the idle server measured just before in the
same run: a ratio that holds on a busy shared machine (the gate in ``make test``).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from tce_backends.errors import UsageError

PROTOCOLS = ("http", "grpc")
PERCENTILES = {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}


class SLOConfigError(UsageError):
    """The SLO file is missing a number or holds a wrong one; names the key."""


@dataclass(frozen=True)
class ProtocolSLO:
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def __post_init__(self) -> None:
        values = [self.p50_ms, self.p95_ms, self.p99_ms]
        if not all(isinstance(v, (int, float)) and v > 0 for v in values):
            raise SLOConfigError(f"latency SLOs must be positive numbers, got {values}")
        if not self.p50_ms <= self.p95_ms <= self.p99_ms:
            raise SLOConfigError(f"expected p50 <= p95 <= p99, got {values}")


@dataclass(frozen=True)
class SLOConfig:
    protocols: Mapping[str, ProtocolSLO]
    max_error_rate: float
    min_throughput_rps: float
    max_p99_over_idle_p50: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise SLOConfigError(f"max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if self.max_p99_over_idle_p50 is not None and not self.max_p99_over_idle_p50 >= 1.0:
            raise SLOConfigError(f"max_p99_over_idle_p50 must be >= 1, got {self.max_p99_over_idle_p50}")
        if self.min_throughput_rps < 0:
            raise SLOConfigError(f"min_throughput_rps must be >= 0, got {self.min_throughput_rps}")
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise SLOConfigError(f"unknown protocols {unknown}; known: {list(PROTOCOLS)}")

    @classmethod
    def load(cls, path: Path | str) -> "SLOConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        try:
            protocols = {}
            for name, slo in (data.get("protocols") or {}).items():
                try:
                    protocols[name] = ProtocolSLO(**{key: float(slo[key]) for key in PERCENTILES})
                except SLOConfigError as error:
                    raise SLOConfigError(f"protocols.{name}: {error}") from None
            ratio = data.get("max_p99_over_idle_p50")
            return cls(protocols, float(data["max_error_rate"]), float(data["min_throughput_rps"]),
                       None if ratio is None else float(ratio))
        except KeyError as missing:
            raise SLOConfigError(f"{path}: missing {missing}") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, SLOConfigError):
                raise
            raise SLOConfigError(f"{path}: {error}") from None


@dataclass
class LatencyHistogram:
    """Latencies counted per microsecond: exact percentiles (nearest rank)."""

    counts: Counter = field(default_factory=Counter)
    total: int = 0

    def record(self, milliseconds: float) -> None:
        self.counts[int(round(milliseconds * 1000.0))] += 1
        self.total += 1

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in milliseconds (q in (0, 100])."""
        if self.total == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for microseconds in sorted(self.counts):
            seen += self.counts[microseconds]
            if seen >= rank:
                return microseconds / 1000.0
        return max(self.counts) / 1000.0


@dataclass(frozen=True)
class ProtocolSummary:
    protocol: str
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float


@dataclass(frozen=True)
class Check:
    name: str
    measured: float
    limit: float
    ok: bool
    unit: str
    at_most: bool = True  # the limit is a ceiling (latency, errors); False: a floor (throughput)

    def describe(self) -> str:
        relation = "<=" if self.at_most else ">="
        verdict = "PASS" if self.ok else "FAIL"
        if self.ok:
            return f"{verdict} {self.name}: {self.measured:.3f}{self.unit} {relation} {self.limit:g}{self.unit}"
        miss = abs(self.measured - self.limit)
        return (f"{verdict} {self.name}: {self.measured:.3f}{self.unit}, limit {self.limit:g}{self.unit} "
                f"(missed by {miss:.3f}{self.unit})")


def parse_idle_p50(text: str) -> dict[str, float]:
    """``http=12.3,grpc=11.9`` (the locust option) -> {"http": 12.3, "grpc": 11.9}."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        protocol, _, value = part.partition("=")
        if protocol not in PROTOCOLS or not value:
            raise SLOConfigError(f"--idle-p50-ms takes protocol=ms pairs, got {part!r}")
        out[protocol] = float(value)
    return out


def summarise(protocol: str, histogram: LatencyHistogram, errors: int, duration_s: float) -> ProtocolSummary:
    return ProtocolSummary(protocol, histogram.total, errors, histogram.percentile(50), histogram.percentile(95),
                           histogram.percentile(99), histogram.total / duration_s if duration_s > 0 else 0.0)


def evaluate(config: SLOConfig, summaries: Mapping[str, ProtocolSummary],
             idle_p50_ms: Mapping[str, float] | None = None) -> list[Check]:
    """``idle_p50_ms``: per protocol, the p50 of single requests to the idle server."""
    checks = []
    for protocol, slo in config.protocols.items():
        summary = summaries.get(protocol)
        for key in PERCENTILES:
            limit = getattr(slo, key)
            measured = getattr(summary, key) if summary and summary.requests else math.inf
            checks.append(Check(f"{protocol}.{key}", measured, limit, measured <= limit, " ms"))
    if config.max_p99_over_idle_p50 is not None:
        for protocol, summary in summaries.items():
            idle = (idle_p50_ms or {}).get(protocol)
            ratio = summary.p99_ms / idle if idle and summary.requests else math.inf
            checks.append(Check(f"{protocol}.p99_over_idle_p50", ratio, config.max_p99_over_idle_p50,
                                ratio <= config.max_p99_over_idle_p50, "x"))
    requests = sum(s.requests for s in summaries.values())
    errors = sum(s.errors for s in summaries.values())
    error_rate = errors / (requests + errors) if requests + errors else 1.0
    checks.append(Check("error_rate", error_rate, config.max_error_rate, error_rate <= config.max_error_rate, ""))
    throughput = sum(s.throughput_rps for s in summaries.values())
    checks.append(Check("throughput_rps", throughput, config.min_throughput_rps,
                        throughput >= config.min_throughput_rps, " rps", at_most=False))
    return checks


def format_verdict(summaries: Mapping[str, ProtocolSummary], checks: list[Check],
                   idle_p50_ms: Mapping[str, float] | None = None) -> str:
    lines = ["", "== load test summary (exact percentiles, 1 µs resolution)",
             f"{'protocol':<9}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>8}"]
    for s in summaries.values():
        lines.append(f"{s.protocol:<9}{s.requests:>9}{s.errors:>8}{s.p50_ms:>9.2f}{s.p95_ms:>9.2f}{s.p99_ms:>9.2f}"
                     f"{s.throughput_rps:>8.1f}")
    if idle_p50_ms:
        lines.append("idle p50 before the run: " + ", ".join(f"{p} {v:.2f} ms" for p, v in idle_p50_ms.items()))
    lines.append("== SLO verdict")
    lines += [f"  {check.describe()}" for check in checks]
    failed = [c.name for c in checks if not c.ok]
    lines.append(f"== {'FAILED: ' + ', '.join(failed) if failed else 'all SLOs met'}")
    return "\n".join(lines)


def verdict_json(summaries: Mapping[str, ProtocolSummary], checks: list[Check],
                 idle_p50_ms: Mapping[str, float] | None = None) -> str:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps({
        "summaries": {p: {k: clean(v) for k, v in s.__dict__.items()} for p, s in summaries.items()},
        "checks": [{k: clean(v) for k, v in c.__dict__.items()} for c in checks],
        "idle_p50_ms": dict(idle_p50_ms or {}),
        "passed": all(c.ok for c in checks),
    }, indent=1)
