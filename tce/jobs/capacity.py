"""``tce capacity``: replicas for a request rate and a p99 latency SLO, from ``make bench``.

The benchmark measures one replica at several loads (closed loop: 1, 8, 32 single-record
requests in flight), each with its records/s and p99 latency. The plan takes the busiest
load whose p99 meets the SLO, runs each replica at ``headroom`` of that rate (arrivals from
many callers are burstier than a closed loop), and adds ``spare`` replicas so that a
rolling update or a drained node does not break the SLO (the PodDisruptionBudget keeps
them). Figures hold for the hardware the benchmark ran on.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tce_backends.errors import UsageError


@dataclass(frozen=True)
class OperatingPoint:
    concurrency: int
    records_per_s: float
    p99_ms: float


@dataclass(frozen=True)
class CapacityPlan:
    rate: float
    p99_ms: float
    point: OperatingPoint
    headroom: float
    spare: int

    @property
    def per_replica(self) -> float:
        return self.point.records_per_s * self.headroom

    @property
    def replicas(self) -> int:
        return math.ceil(self.rate / self.per_replica) + self.spare

    def describe(self) -> str:
        p = self.point
        return (f"{self.replicas} replicas for {self.rate:g} requests/s at p99 <= {self.p99_ms:g} ms: one replica "
                f"serves {p.records_per_s:.1f} records/s with p99 {p.p99_ms:.1f} ms at {p.concurrency} in flight; "
                f"planned at {self.headroom:.0%} of that ({self.per_replica:.1f}/s each) = "
                f"{self.replicas - self.spare}, plus {self.spare} spare")


def operating_points(benchmark: dict[str, Any]) -> list[OperatingPoint]:
    """The served loads of a ``tce benchmark`` JSON. Concurrency 1 has no p99 in the file:
    its slowest request stands in (an upper bound)."""
    try:
        points = [OperatingPoint(int(c), float(v["records_per_s"]), float(v["p99_ms"]))
                  for c, v in benchmark["served_by_concurrency"].items()]
        single = benchmark["speed_metrics"]["served_concurrency_1"]
        points.append(OperatingPoint(1, float(single["throughput_samples_per_sec"]),
                                     float(single["max_time_per_sample_ms"])))
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"not a 'tce benchmark' result (missing {error}); run make bench") from None
    return sorted(points, key=lambda p: p.concurrency)


def plan_capacity(points: list[OperatingPoint], rate: float, p99_ms: float, headroom: float = 0.8,
                  spare: int = 1) -> CapacityPlan:
    if rate <= 0 or p99_ms <= 0:
        raise UsageError("--rate and --p99-ms must be > 0")
    if not 0 < headroom <= 1:
        raise UsageError(f"--headroom must be in (0, 1], got {headroom}")
    if spare < 0:
        raise UsageError(f"--spare must be >= 0, got {spare}")
    meeting = [p for p in points if p.p99_ms <= p99_ms]
    if not meeting:
        fastest = min(points, key=lambda p: p.p99_ms)
        raise UsageError(f"no measured load meets p99 <= {p99_ms:g} ms (best: {fastest.p99_ms:.1f} ms at "
                         f"{fastest.concurrency} in flight): more replicas cannot fix latency on this hardware")
    return CapacityPlan(rate, p99_ms, max(meeting, key=lambda p: p.records_per_s), headroom, spare)


def load_points(path: Path) -> list[OperatingPoint]:
    if not Path(path).is_file():
        raise UsageError(f"{path} does not exist: run 'make bench' first (it writes artifacts/benchmark.json)")
    return operating_points(json.loads(Path(path).read_text(encoding="utf-8")))
