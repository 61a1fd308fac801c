"""Calibration rules: lookup tables applied with vectorised linear interpolation.

Semantics follow seed 000's ``_interpolate_score`` exactly (clamped at both ends,
first bracketing segment wins on duplicate x, NaN maps to the last point), but on
whole arrays. Per task, one of:

- ``none``: raw is returned as calibrated (the seed's no-op mode);
- ``percentile`` / ``binary``: one table on class 1, class 0 = 1 - p;
- ``multiclass``: one table per class (classes without a table keep raw), then
  every row is renormalised to sum to 1.

Multi-task models carry one such calibration per task (score field).

A calibration that cannot be loaded or applied falls back to raw for that task
and reports it (``fallback_reasons`` at load time, per-row flags at apply time):
never silently, never by raising into the serving path. Tables must map into
[0, 1]; one that does not is refused (a bundle) or falls back (a served step).

``Calibrator.version`` is the fingerprint of the tables actually in use (prefixed by
a label, when one was given), so a response's ``calibration_version`` always says
which tables produced it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from .errors import BundleError
from .tasks import TaskSpec, task_columns

CalibrationMethod = Literal["none", "percentile", "binary", "multiclass"]
METHODS: tuple[str, ...] = ("none", "percentile", "binary", "multiclass")
CALIBRATION_FILE = "calibration.json"
_PROBABILITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LookupTable:
    """Sorted (raw, calibrated) points."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        if x.size == 0 or x.size != y.size:
            raise ValueError(f"a lookup table needs matching non-empty x and y, got {x.size} and {y.size} points")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("lookup table points must be finite")
        if np.any(np.diff(x) < 0):
            raise ValueError("lookup table raw scores must be sorted ascending")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @classmethod
    def from_points(cls, points: Sequence[Sequence[float]], sort: bool = False) -> "LookupTable":
        array = np.asarray(points, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"expected (raw, calibrated) pairs, got an array of shape {array.shape}")
        if sort:
            array = array[np.argsort(array[:, 0], kind="stable")]
        return cls(array[:, 0], array[:, 1])

    def points(self) -> np.ndarray:
        return np.stack([self.x, self.y], axis=1)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        x, y = self.x, self.y
        if x.size == 1:
            return np.full(raw.shape, y[0])
        # First k with x[k] >= raw: the seed's first bracketing segment is (k-1, k).
        k = np.clip(np.searchsorted(x, raw, side="left"), 1, x.size - 1)
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = y0 + (y1 - y0) * (raw - x0) / (x1 - x0)
        out = np.where(x1 == x0, y0, out)
        out = np.where(raw >= x[-1], y[-1], out)
        out = np.where(raw <= x[0], y[0], out)
        return np.where(np.isnan(raw), y[-1], out)


@dataclass(frozen=True)
class TaskCalibration:
    method: CalibrationMethod = "none"
    tables: Mapping[int, LookupTable] = field(default_factory=dict)

    def check(self, task: TaskSpec) -> None:
        """Raise ValueError if this calibration cannot serve ``task``."""
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; known: {list(METHODS)}")
        for column, table in sorted(self.tables.items()):
            low, high = float(table.y.min()), float(table.y.max())
            if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
                raise ValueError(f"the table for class {column} maps to [{low:g}, {high:g}], outside [0, 1]")
        if self.method == "none":
            if self.tables:
                raise ValueError("method 'none' takes no tables")
            return
        if self.method in ("percentile", "binary"):
            if task.kind != "binary":
                raise ValueError(f"{self.method} calibration needs a binary task, {task.name!r} is {task.kind}")
            if set(self.tables) != {1}:
                raise ValueError(f"{self.method} calibration needs exactly one table, on class 1")
            return
        bad = [c for c in self.tables if not 0 <= c < task.num_classes]
        if bad or not self.tables:
            raise ValueError(f"multiclass calibration needs tables for classes in [0, {task.num_classes}), got "
                             f"{sorted(self.tables)}")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """raw float [B, classes] -> calibrated float64 [B, classes]."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "none":
            return raw.copy()
        if self.method in ("percentile", "binary"):
            positive = self.tables[1](raw[:, 1])
            return np.stack([1.0 - positive, positive], axis=1)
        calibrated = raw.copy()
        for column, table in self.tables.items():
            calibrated[:, column] = table(raw[:, column])
        totals = calibrated.sum(axis=1, keepdims=True)
        usable = np.isfinite(totals) & (totals > 0)
        return np.where(usable, calibrated / np.where(usable, totals, 1.0), np.nan)


@dataclass(frozen=True)
class CalibratedBatch:
    raw: dict[str, np.ndarray]          # task -> [B, classes], as given
    calibrated: dict[str, np.ndarray]   # task -> float64 [B, classes]
    labels: dict[str, np.ndarray]       # task -> int64 [B], argmax of raw (seed 000)
    fallback: np.ndarray                # bool [B, tasks]: calibrated == raw because calibration failed


class Calibrator:
    """Applies every task's calibration to the model's concatenated probabilities."""

    def __init__(self, tasks: Sequence[TaskSpec], calibrations: Mapping[str, TaskCalibration],
                 label: str = "", fallback_reasons: Mapping[str, str] | None = None) -> None:
        unknown = sorted(set(calibrations) - {t.name for t in tasks})
        if unknown:
            raise BundleError("calibration", f"calibration for unknown tasks {unknown}")
        self.tasks = tuple(tasks)
        self.fallback_reasons = dict(fallback_reasons or {})
        self.calibrations: dict[str, TaskCalibration] = {}
        for task in self.tasks:
            calibration = calibrations.get(task.name, TaskCalibration())
            try:
                calibration.check(task)
            except ValueError as exc:
                raise BundleError(f"calibration/{task.name}", str(exc)) from None
            self.calibrations[task.name] = calibration
        fingerprint = self.fingerprint()
        self.label = "" if label == fingerprint else label  # older bundles stored the fingerprint itself
        self.version = f"{self.label}@{fingerprint}" if self.label else fingerprint
        self._columns = task_columns(self.tasks)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for task in self.tasks:
            calibration = self.calibrations[task.name]
            digest.update(f"{task.name}:{calibration.method}".encode())
            for column in sorted(calibration.tables):
                digest.update(calibration.tables[column].points().tobytes())
        return digest.hexdigest()[:12]

    def apply(self, probabilities: np.ndarray) -> CalibratedBatch:
        probabilities = np.asarray(probabilities)
        batch = probabilities.shape[0]
        raw, calibrated, labels = {}, {}, {}
        fallback = np.zeros((batch, len(self.tasks)), dtype=bool)
        for index, task in enumerate(self.tasks):
            task_raw = probabilities[:, self._columns[task.name]]
            if task.name in self.fallback_reasons:
                task_calibrated, failed = task_raw.astype(np.float64), np.ones(batch, dtype=bool)
            else:
                try:
                    task_calibrated = self.calibrations[task.name].apply(task_raw)
                    failed = ~np.isfinite(task_calibrated).all(axis=1)
                except Exception:  # noqa: BLE001 - any failure degrades to raw, flagged below
                    task_calibrated, failed = task_raw.astype(np.float64), np.ones(batch, dtype=bool)
                task_calibrated[failed] = task_raw[failed]
            raw[task.name] = task_raw
            calibrated[task.name] = task_calibrated
            labels[task.name] = task_raw.argmax(axis=1).astype(np.int64)
            fallback[:, index] = failed
        return CalibratedBatch(raw, calibrated, labels, fallback)

    # -- persistence -----------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        entries = {}
        for task in self.tasks:
            calibration = self.calibrations[task.name]
            tables = {}
            for column, table in sorted(calibration.tables.items()):
                filename = f"{task.name}_class_{column}.npy"
                np.save(directory / filename, table.points(), allow_pickle=False)
                tables[str(column)] = filename
            entries[task.name] = {"method": calibration.method, "tables": tables}
        payload = {"label": self.label, "tasks": entries}
        (directory / CALIBRATION_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, tasks: Sequence[TaskSpec], strict: bool = False) -> "Calibrator":
        """Load ``directory/calibration.json`` and its tables.

        No directory or no ``calibration.json``: raw pass-through for every task.
        A corrupt file or table makes that task (or every task) fall back to raw
        with a reason, unless ``strict``, where it raises ``BundleError``.
        """
        path = directory / CALIBRATION_FILE
        if not path.exists():
            return cls(tasks, {})
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            entries = payload["tasks"]
            label = str(payload.get("label", payload.get("version", "")))
            if not isinstance(entries, dict):
                raise TypeError("'tasks' must be an object")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            if strict:
                raise BundleError("calibration", f"unreadable {path}: {exc!r}") from None
            reason = f"unreadable {path.name}: {exc!r}"
            return cls(tasks, {}, label="unavailable", fallback_reasons={t.name: reason for t in tasks})
        calibrations, reasons = {}, {}
        known = {t.name: t for t in tasks}
        for name, entry in entries.items():
            try:
                if name not in known:
                    raise ValueError(f"no task named {name!r}")
                tables = {}
                for column, filename in entry.get("tables", {}).items():
                    points = np.load(directory / filename, allow_pickle=False)
                    tables[int(column)] = LookupTable.from_points(points)
                calibration = TaskCalibration(entry["method"], tables)
                calibration.check(known[name])
                calibrations[name] = calibration
            except Exception as exc:  # noqa: BLE001 - a broken table must not take the server down
                if strict:
                    raise BundleError(f"calibration/{name}", f"{type(exc).__name__}: {exc}") from None
                if name in known:
                    reasons[name] = f"{type(exc).__name__}: {exc}"
        return cls(tasks, calibrations, label=label, fallback_reasons=reasons)


def sample_table(predict: Any, points: int = 1000, low: float = 0.0, high: float = 1.0) -> LookupTable:
    """Turn a fitted 1-D calibration function into the seed's lookup table format."""
    x = np.linspace(low, high, points)
    y = np.clip(np.asarray(predict(x), dtype=np.float64), 0.0, 1.0)
    if not math.isfinite(float(y.sum())):
        raise ValueError("calibration function produced non-finite values")
    return LookupTable(x, y)
