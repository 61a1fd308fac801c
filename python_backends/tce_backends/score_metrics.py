"""Score metrics of the calibrator step, and the reference they are compared with.

One bin layout (``BIN_EDGES``: ten equal bins of [0, 1]) serves three places: the live
histograms the calibrator exports, the reference distribution a bundle stores
(``reference_scores.json`` beside ``calibration.json``, from the calibration data) and
the Prometheus rules that compare the two (``tce.lib.prometheus_rules``).

What Prometheus sees, per task, class and score kind (``score`` = raw or calibrated),
labelled with the step's ``model``/``version``, the ``release`` and ``calibration_version``:

- ``tce_score_bucket{le}``, ``tce_score_count``, ``tce_score_sum``: Prometheus' histogram
  layout (cumulative buckets up to ``le="+Inf"``), so ``histogram_quantile`` and Grafana's
  heatmaps read them as they are;
- ``tce_predicted_label_total{task,label}``: answers per predicted label;
- ``tce_score_reference_fraction{bin}``: the reference's share of scores per bin (gauges);
- ``tce_canary_predictions_total``: the health canary's own rows, which no other metric counts;
- ``tce_calibrated_predictions_total`` and ``tce_calibration_fallback_total`` (``model``,
  ``version``, ``task``), as before.

Cost: each metric update is a round trip from the Python stub to the server (about 20-30 us
measured here), so a batch is only tallied in process (``ScoreTally.add``: a few NumPy calls)
and ``CalibratorMetrics.publish`` sends what accumulated, one update per non-empty bucket,
from one thread every ``DEFAULT_FLUSH_S`` (``PeriodicFlush``). Triton 2.51's stub crashes the
server when two threads update metrics at once: after start-up only that thread may. The
calibrator's config parameters ``metrics_flush_s`` (0: publish from ``execute``, per batch) and
``score_metrics`` ("false": only the counters) change this (``tce_backends.triton.models``).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from .contract import CALIBRATION_FALLBACK, task_output_names
from .errors import BundleError
from .tasks import TaskSpec

BIN_EDGES: tuple[float, ...] = tuple(round(k / 10, 1) for k in range(11))  # 0.0, 0.1, ..., 1.0
BINS = len(BIN_EDGES) - 1
# In float32, the precision the step serves scores in: a score on an edge (isotonic tables yield
# values such as 0.1) falls in the same bin live and in the float64 calibration data.
_UPPER = np.asarray(BIN_EDGES[1:], dtype=np.float32)
# Bucket k of the live histogram holds scores <= BIN_EDGES[k + 1] (Prometheus' ``le``); the
# overflow bucket (index BINS, "+Inf") holds only what is not a probability, which never reaches it.
LE_LABELS: tuple[str, ...] = (*(f"{edge:g}" for edge in BIN_EDGES[1:]), "+Inf")
# Bin k of the reference and of the rules' per-bin fractions: (BIN_EDGES[k], BIN_EDGES[k + 1]].
BIN_LABELS: tuple[str, ...] = tuple(f"{low:g}-{high:g}"
                                    for low, high in zip(BIN_EDGES[:-1], BIN_EDGES[1:], strict=True))
SCORE_KINDS: tuple[str, ...] = ("raw", "calibrated")
REFERENCE_FILE = "reference_scores.json"
DEFAULT_FLUSH_S = 1.0

SCORE_BUCKET, SCORE_COUNT, SCORE_SUM = "tce_score_bucket", "tce_score_count", "tce_score_sum"
PREDICTED_LABEL = "tce_predicted_label_total"
REFERENCE_FRACTION = "tce_score_reference_fraction"
CANARY_PREDICTIONS = "tce_canary_predictions_total"
CALIBRATED_PREDICTIONS = "tce_calibrated_predictions_total"
CALIBRATION_FALLBACK_TOTAL = "tce_calibration_fallback_total"


def bin_of(scores: np.ndarray) -> np.ndarray:
    """Bin index of every score: k for (BIN_EDGES[k], BIN_EDGES[k + 1]] (0 also holds 0.0);
    BINS for a score above 1 or NaN."""
    return np.searchsorted(_UPPER, np.asarray(scores, dtype=np.float32), side="left")


# -- the reference distribution ---------------------------------------------------

def _counts(scores: np.ndarray, what: str) -> np.ndarray:
    """[rows, classes] probabilities -> int64 counts [classes, BINS]."""
    scores = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(scores) & (scores >= 0) & (scores <= 1)
    if scores.ndim != 2 or not inside.all():
        raise ValueError(f"{what}: reference scores must be a [rows, classes] array of probabilities in [0, 1]")
    bins = bin_of(scores)
    return np.stack([np.bincount(bins[:, column], minlength=BINS) for column in range(scores.shape[1])])


@dataclass(frozen=True)
class ReferenceScores:
    """Per task and score kind, how many calibration-data scores fell in each bin, per class."""

    counts: Mapping[str, Mapping[str, np.ndarray]]  # task -> score kind -> int64 [classes, BINS]

    @classmethod
    def of_scores(cls, scores: Mapping[str, Mapping[str, np.ndarray]]) -> "ReferenceScores":
        """``scores``: task -> score kind -> [rows, classes] probabilities."""
        return cls({task: {kind: _counts(kinds[kind], f"task {task!r}, {kind}") for kind in SCORE_KINDS}
                    for task, kinds in scores.items()})

    @classmethod
    def of_calibrated(cls, raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray]) -> "ReferenceScores":
        """From a ``Calibrator.apply`` result's ``raw`` and ``calibrated`` (task -> [rows, classes])."""
        return cls.of_scores({task: {"raw": raw[task], "calibrated": calibrated[task]} for task in raw})

    def records(self, task: str) -> int:
        return int(self.counts[task]["raw"][0].sum())

    def fractions(self, task: str, kind: str) -> np.ndarray:
        """float64 [classes, BINS]: each class's share of scores per bin."""
        counts = self.counts[task][kind]
        return counts / max(int(counts[0].sum()), 1)

    def merged(self, newer: "ReferenceScores") -> "ReferenceScores":
        """These tasks, with ``newer``'s where it has them."""
        return ReferenceScores({**self.counts, **newer.counts})

    def to_dict(self) -> dict:
        return {"bin_edges": list(BIN_EDGES),
                "tasks": {task: {"records": self.records(task),
                                 **{kind: kinds[kind].tolist() for kind in SCORE_KINDS}}
                          for task, kinds in self.counts.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object, tasks: Sequence[TaskSpec]) -> "ReferenceScores":
        """Checked against ``tasks``; ValueError says what does not fit."""
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            raise ValueError("expected an object with 'bin_edges' and 'tasks'")
        edges = data.get("bin_edges")
        if not isinstance(edges, list) or len(edges) != len(BIN_EDGES) or not np.allclose(edges, BIN_EDGES):
            raise ValueError(f"binned with edges {edges}, this version bins with {list(BIN_EDGES)}: refit the "
                             "calibration (tce calibrate fit) to store it again")
        known = {task.name: task for task in tasks}
        counts = {}
        for name, entry in data["tasks"].items():
            if name not in known:
                raise ValueError(f"no task named {name!r} in the bundle")
            counts[name] = {kind: _stored_counts(entry, kind, known[name]) for kind in SCORE_KINDS}
        return cls(counts)

    def save(self, directory: Path) -> None:
        (Path(directory) / REFERENCE_FILE).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n",
                                                      encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, tasks: Sequence[TaskSpec]) -> "ReferenceScores | None":
        """The reference stored in a calibration directory; None when it stores none (bundles
        written before it existed, or calibrated without data). A damaged file raises BundleError."""
        path = Path(directory) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), tasks)
        except (ValueError, OSError) as error:
            raise BundleError(f"calibration/{REFERENCE_FILE}", str(error)) from None


def _stored_counts(entry: object, kind: str, task: TaskSpec) -> np.ndarray:
    counts = np.asarray(entry.get(kind) if isinstance(entry, dict) else None, dtype=object)
    if counts.shape != (task.num_classes, BINS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.ravel()):
        raise ValueError(f"task {task.name!r}: '{kind}' must hold {task.num_classes} lists of {BINS} counts")
    counts = counts.astype(np.int64)
    if len(set(counts.sum(axis=1).tolist())) != 1:
        raise ValueError(f"task {task.name!r}: '{kind}' classes count different numbers of records")
    return counts


# -- live tallies -----------------------------------------------------------------------

@dataclass
class Tally:
    """What accumulated between two publishes."""

    bins: np.ndarray         # int64 [series, BINS + 1]: scores per bin (last: overflow)
    sums: np.ndarray         # float64 [series]
    labels: np.ndarray       # int64 [label series]: answers per predicted label
    predictions: np.ndarray  # int64 [tasks]
    fallbacks: np.ndarray    # int64 [tasks]
    canary: int = 0

    @classmethod
    def zeros(cls, series: int, label_series: int, tasks: int) -> "Tally":
        return cls(np.zeros((series, BINS + 1), dtype=np.int64), np.zeros(series), np.zeros(label_series, np.int64),
                   np.zeros(tasks, np.int64), np.zeros(tasks, np.int64))


@dataclass(frozen=True)
class SeriesLayout:
    """The order of the score series (task, kind, class) and label series (task, class)."""

    tasks: tuple[TaskSpec, ...]
    score_outputs: tuple[str, ...] = field(init=False)  # per task: its raw then calibrated output
    series: tuple[tuple[str, str, str], ...] = field(init=False)  # (task, score kind, class)
    label_series: tuple[tuple[str, str], ...] = field(init=False)  # (task, class)

    def __post_init__(self) -> None:
        outputs = [name for t in self.tasks for name in task_output_names(t.name)[:2]]
        object.__setattr__(self, "score_outputs", tuple(outputs))
        object.__setattr__(self, "series", tuple((t.name, kind, c) for t in self.tasks for kind in SCORE_KINDS
                                                 for c in t.classes))
        object.__setattr__(self, "label_series", tuple((t.name, c) for t in self.tasks for c in t.classes))


class ScoreTally:
    """Adds a batch's scores, labels and flags (``add``, from ``execute``); hands the sums
    over and starts again (``take``, from the publishing thread). Without ``scores`` only the
    prediction, fallback and canary counts are kept."""

    def __init__(self, tasks: Sequence[TaskSpec], scores: bool = True) -> None:
        self.layout = SeriesLayout(tuple(tasks))
        self.scores = scores
        self._class_names = [np.array([c.encode() for c in t.classes], dtype=object) for t in self.layout.tasks]
        self._labels = [task_output_names(t.name)[2] for t in self.layout.tasks]
        self._offsets = np.arange(len(self.layout.series)) * (BINS + 1)
        self._lock = threading.Lock()
        self._tally = self._zeros()

    def _zeros(self) -> Tally:
        return Tally.zeros(len(self.layout.series), len(self.layout.label_series), len(self.layout.tasks))

    def add(self, outputs: Mapping[str, np.ndarray], canary_rows: np.ndarray | None = None) -> None:
        """``outputs``: the calibrator step's outputs for a batch; ``canary_rows``: bool [batch],
        the health canary's rows (counted apart, nowhere else), or None when there are none."""
        keep = slice(None) if canary_rows is None else ~canary_rows
        canary = 0 if canary_rows is None else int(canary_rows.sum())
        flags = outputs[CALIBRATION_FALLBACK][keep]
        rows, fallbacks = flags.shape[0], flags.sum(axis=0)
        if self.scores:
            scores = np.concatenate([outputs[name][keep] for name in self.layout.score_outputs], axis=1)
            bins = np.bincount((bin_of(scores) + self._offsets).ravel(), minlength=self._offsets.size * (BINS + 1))
            sums = scores.sum(axis=0, dtype=np.float64)
            labels = np.concatenate([(outputs[name][keep].reshape(-1, 1) == names).sum(axis=0)
                                     for name, names in zip(self._labels, self._class_names, strict=True)])
        with self._lock:
            tally = self._tally
            if self.scores:
                tally.bins += bins.reshape(tally.bins.shape)
                tally.sums += sums
                tally.labels += labels.astype(np.int64)
            tally.predictions += rows
            tally.fallbacks += fallbacks
            tally.canary += canary

    def take(self) -> Tally:
        with self._lock:
            tally, self._tally = self._tally, self._zeros()
        return tally


# -- exporting ------------------------------------------------------------------------------

class Counter(Protocol):
    def increment(self, value: float) -> None: ...


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class MetricSink(Protocol):
    """Where metrics live: Triton's registry in a step (``tce_backends.triton.models``)."""

    def counter(self, name: str, description: str, labels: Mapping[str, str]) -> Counter: ...

    def gauge(self, name: str, description: str, labels: Mapping[str, str]) -> Gauge: ...


class CalibratorMetrics:
    """Every metric the calibrator exports, created up front; ``publish`` sends a tally as
    increments (only non-zero ones) and the reference is set once, at creation. Without
    ``scores``: no histograms, label counters or reference (``ScoreTally(scores=False)``)."""

    def __init__(self, sink: MetricSink, tasks: Sequence[TaskSpec], step_labels: Mapping[str, str], release: str,
                 calibration_version: str, reference: ReferenceScores | None, scores: bool = True) -> None:
        self.layout = SeriesLayout(tuple(tasks))
        step = dict(step_labels)
        labels = {**step, "release": release, "calibration_version": calibration_version}
        self._buckets, self._counts, self._sums = [], [], []
        for task, kind, name in self.layout.series if scores else ():
            series = {**labels, "task": task, "class": name, "score": kind}
            self._buckets.append([sink.counter(SCORE_BUCKET, "Scores at or below le, per task, class and kind",
                                               {**series, "le": le}) for le in LE_LABELS])
            self._counts.append(sink.counter(SCORE_COUNT, "Scores counted", series))
            self._sums.append(sink.counter(SCORE_SUM, "Sum of the scores counted", series))
        self._labels = [sink.counter(PREDICTED_LABEL, "Answers per predicted label", {**labels, "task": task,
                                                                                      "label": name})
                        for task, name in (self.layout.label_series if scores else ())]
        self._predictions = [sink.counter(CALIBRATED_PREDICTIONS, "Predictions that went through the calibrator",
                                          {**step, "task": t.name}) for t in self.layout.tasks]
        self._fallbacks = [sink.counter(CALIBRATION_FALLBACK_TOTAL,
                                        "Predictions whose calibrated score fell back to the raw score",
                                        {**step, "task": t.name}) for t in self.layout.tasks]
        self._canary = sink.counter(CANARY_PREDICTIONS, "The health canary's rows (counted nowhere else)", labels)
        self._reference: list[Gauge] = []
        if reference is not None and scores:
            self._set_reference(sink, labels, reference)

    def _set_reference(self, sink: MetricSink, labels: Mapping[str, str], reference: ReferenceScores) -> None:
        for task in self.layout.tasks:
            if task.name not in reference.counts:
                continue
            for kind in SCORE_KINDS:
                for name, fractions in zip(task.classes, reference.fractions(task.name, kind), strict=True):
                    for bin_label, fraction in zip(BIN_LABELS, fractions, strict=True):
                        gauge = sink.gauge(REFERENCE_FRACTION, "Share of the calibration data's scores per bin",
                                           {**labels, "task": task.name, "class": name, "score": kind,
                                            "bin": bin_label})
                        gauge.set(float(fraction))
                        self._reference.append(gauge)

    def publish(self, tally: Tally) -> int:
        """Send ``tally``; returns how many metric updates that took."""
        updates = 0
        cumulative = np.cumsum(tally.bins, axis=1)
        for index in np.flatnonzero(cumulative[:, -1]):
            for bucket in np.flatnonzero(cumulative[index]):
                self._buckets[index][bucket].increment(float(cumulative[index, bucket]))
            self._counts[index].increment(float(cumulative[index, -1]))
            self._sums[index].increment(float(tally.sums[index]))
            updates += np.count_nonzero(cumulative[index]) + 2
        for counters, values in ((self._labels, tally.labels), (self._predictions, tally.predictions),
                                 (self._fallbacks, tally.fallbacks)):
            for index in np.flatnonzero(values):
                counters[index].increment(float(values[index]))
                updates += 1
        if tally.canary:
            self._canary.increment(float(tally.canary))
            updates += 1
        return updates


class PeriodicFlush:
    """Calls ``flush`` every ``interval_s`` on one daemon thread. ``stop`` wakes it, waits for
    it and says whether it ended (only then may the caller flush once more itself)."""

    def __init__(self, flush: Callable[[], object], interval_s: float, report: Callable[[str], None]) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._flush, self._interval_s, self._report = flush, interval_s, report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tce-metrics", daemon=True)
        self._reported = False

    def start(self) -> "PeriodicFlush":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._flush()
            except Exception as error:  # noqa: BLE001 - metrics must never take the step down
                if not self._reported:
                    self._reported = True
                    self._report(f"publishing metrics failed (reported once): {error!r}")

    def stop(self, timeout_s: float = 5.0) -> bool:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()
