"""Shadow traffic: a copy of a request also runs on a candidate release, in the
background, after the caller has its answer from the current release. The copy's answer
is only compared with the caller's and dropped.

Compared per record: every ``<task>_label`` both answers hold (a record agrees when all
its labels agree), and the largest difference of the ``<task>_calibrated`` outputs. Counts
are kept per door worker and logged (``tce_gateway: shadow ...`` in the door's log) for the
first comparison and then every ``log_every``-th, and when the worker stops. The copy asks
for every output; its inputs are those the door checked for the caller, sent only when
the candidate takes the same inputs as the current release. At most ``max_in_flight``
copies run at once per worker: beyond that a copy is skipped (and counted), so shadowing
never queues work in front of callers."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tce_gateway import http_codec
from tce_gateway.errors import Refusal
from tce_gateway.signatures import ModelSignature, SignatureCache
from tce_gateway.tensors import InferRequest
from tce_gateway.upstream import HttpAnswer, Triton, Unreachable

LABEL_SUFFIX = "_label"
CALIBRATED_SUFFIX = "_calibrated"


@dataclass(frozen=True)
class Agreement:
    records: int
    agreeing: int | None     # records whose labels all agree (None: no label output to compare)
    max_calibrated_difference: float | None


def agreement(current: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> Agreement:
    """How the candidate's answer agrees with the current one's, record by record."""
    labels = [n for n in current if n.endswith(LABEL_SUFFIX) and n in candidate
              and current[n].shape == candidate[n].shape]
    calibrated = [n for n in current if n.endswith(CALIBRATED_SUFFIX) and n in candidate
                  and current[n].shape == candidate[n].shape]
    shapes = [current[n].shape[0] for n in labels + calibrated if current[n].ndim]
    records = shapes[0] if shapes else 0
    agreeing = None
    if labels:
        same = np.ones(records, dtype=bool)
        for name in labels:
            same &= (current[name] == candidate[name]).reshape(records, -1).all(axis=1)
        agreeing = int(same.sum())
    difference = None
    if calibrated:
        difference = max(float(np.max(np.abs(current[n].astype(np.float64) - candidate[n].astype(np.float64)),
                                      initial=0.0)) for n in calibrated)
    return Agreement(records, agreeing, difference)


@dataclass
class ShadowStats:
    """One worker's counts for the candidate release being shadowed."""

    release: int
    ensemble: str
    compared: int = 0            # requests whose copy answered and was compared
    records: int = 0
    labelled: int = 0            # records whose labels could be compared
    agreeing: int = 0            # ... and agreed
    max_calibrated_difference: float = 0.0
    failed: int = 0              # copies the candidate refused or did not answer
    skipped: int = 0             # copies not sent: too many in flight, or a candidate that takes other inputs
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: Agreement) -> None:
        self.compared += 1
        self.records += result.records
        if result.agreeing is not None:
            self.labelled += result.records
            self.agreeing += result.agreeing
        if result.max_calibrated_difference is not None:
            self.max_calibrated_difference = max(self.max_calibrated_difference, result.max_calibrated_difference)

    def line(self) -> str:
        share = f" = {100 * self.agreeing / self.labelled:.1f}%" if self.labelled else ""
        reasons = "".join(f"; {why}: {count}" for why, count in sorted(self.reasons.items()))
        return (f"shadow of release {self.release} beside '{self.ensemble}' (worker {os.getpid()}): "
                f"{self.compared} requests compared, {self.records} records, labels agree on {self.agreeing} of "
                f"{self.labelled}{share}, largest calibrated difference {self.max_calibrated_difference:.6g}; "
                f"{self.failed} failed, {self.skipped} skipped{reasons}")


def _say(line: str) -> None:
    print(f"tce_gateway: {line}", file=sys.stderr, flush=True)


class Shadow:
    """Sends copies of requests to candidate releases and keeps their counts."""

    def __init__(self, triton: Triton, signatures: SignatureCache, timeout_s: float, max_in_flight: int = 32,
                 log_every: int = 100, log: Callable[[str], None] = _say) -> None:
        self._triton = triton
        self._signatures = signatures
        self._timeout_s = timeout_s
        self._max_in_flight = max_in_flight
        self._log_every = log_every
        self._log = log
        self._tasks: set[asyncio.Future] = set()
        self.stats: dict[str, ShadowStats] = {}   # candidate model -> counts

    def send(self, ensemble: str, release: int, candidate: str, request: InferRequest, signature: ModelSignature,
             answer: HttpAnswer) -> None:
        """Schedule the copy of ``request`` (checked against ``signature``, answered with
        ``answer``) on ``candidate``; returns at once."""
        stats = self.stats.get(candidate)
        if stats is None:
            stats = self.stats[candidate] = ShadowStats(release, ensemble)
        if answer.status != 200:
            return  # nothing to compare with
        if len(self._tasks) >= self._max_in_flight:
            self._skip(stats, "too many copies in flight")
            return
        task = asyncio.ensure_future(self._run(stats, candidate, request, signature, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, stats: ShadowStats, candidate: str, request: InferRequest, signature: ModelSignature,
                   answer: HttpAnswer) -> None:
        try:
            target = await self._signatures.get(candidate)
        except Refusal:
            self._skip(stats, f"'{candidate}' is not loaded")
            return
        if target.inputs != signature.inputs or target.max_batch_size < signature.max_batch_size:
            self._skip(stats, f"'{candidate}' takes other inputs than the current release")
            return
        copy = dataclasses.replace(request, model=candidate, version="", outputs=(), binary_output=True)
        payload, headers = http_codec.encode_infer(copy)
        try:
            reply = await self._triton.http("POST", f"/v2/models/{candidate}/infer", payload, headers,
                                            timeout_s=self._timeout_s)
        except (Unreachable, Refusal, TimeoutError, ConnectionError) as error:
            self._fail(stats, type(error).__name__)
            return
        if reply.status != 200:
            self._fail(stats, f"HTTP {reply.status}")
            return
        try:
            result = agreement(http_codec.answer_tensors(answer.headers, answer.body),
                               http_codec.answer_tensors(reply.headers, reply.body))
        except (ValueError, KeyError, TypeError, struct.error) as error:
            self._fail(stats, f"unreadable answer ({type(error).__name__})")
            return
        stats.add(result)
        if stats.compared == 1 or stats.compared % self._log_every == 0:
            self._log(stats.line())

    def _skip(self, stats: ShadowStats, why: str) -> None:
        stats.skipped += 1
        self._count(stats, why)

    def _fail(self, stats: ShadowStats, why: str) -> None:
        stats.failed += 1
        self._count(stats, why)

    def _count(self, stats: ShadowStats, why: str) -> None:
        first = why not in stats.reasons
        stats.reasons[why] = stats.reasons.get(why, 0) + 1
        if first:
            self._log(stats.line())

    async def drain(self) -> None:
        """Wait for the copies in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the copies in flight and log the final counts."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for stats in self.stats.values():
            if stats.compared or stats.failed or stats.skipped:
                self._log(stats.line())
