"""Calibration rules: lookup tables applied with vectorised linear interpolation.

Semantics follow seed 000's ``_interpolate_score`` exactly (clamped at both ends,
first bracketing segment wins on duplicate x, NaN maps to the last point), but on
whole arrays. Per task, one registered kind (``CALIBRATION_KINDS``):

- ``none``: raw is returned as calibrated (the seed's no-op mode);
- ``percentile`` / ``binary``: one table on class 1, class 0 = 1 - p;
- ``multiclass``: one table per class (classes without a table keep raw), then
  every row is renormalised to sum to 1.

Multi-task models carry one such calibration per task (score field).

A calibration that cannot be loaded or applied falls back to raw for that task
and reports it (``fallback_reasons`` at load time, per-row flags at apply time):
never silently, never by raising into the serving path. Tables must map into
[0, 1]; one that does not is refused (a bundle) or falls back (a served step).

``Calibrator.version`` is the fingerprint of the tables actually in use and of the
decision policy (``tce_backends.decisions``, ``policy.json`` beside ``calibration.json``),
prefixed by a label when one was given, so a response's ``calibration_version`` always
says which tables and which policy produced it. ``Calibrator.model_fingerprint`` is the model the tables were
fitted for (``calibration.json``'s ``model_fingerprint``: ``tce calibrate fit`` and bundle
writers record it; "" for calibrations written before it was recorded).
"""
from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import numpy as np

from .decisions import POLICY_FILE, DecisionPolicy
from .errors import BundleError
from .tasks import TaskSpec, task_columns

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
        # Per-segment rise and run, computed once. A zero-width segment gets run = inf, so
        # its interpolation term is 0 and it yields y0, as the seed's x1 == x0 rule says.
        width = np.diff(x)
        object.__setattr__(self, "_rise", np.diff(y))
        object.__setattr__(self, "_run", np.where(width == 0, np.inf, width))

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
        flat = raw.reshape(-1)
        # First k with x[k] >= raw: the seed's first bracketing segment is (k-1, k).
        segment = x.searchsorted(flat, side="left").clip(1, x.size - 1) - 1
        # Same operations in the same order as the seed's y0 + (y1 - y0) * (raw - x0) / (x1 - x0).
        out = y[segment] + self._rise[segment] * (flat - x[segment]) / self._run[segment]
        out[flat >= x[-1]] = y[-1]
        out[flat <= x[0]] = y[0]
        out[np.isnan(flat)] = y[-1]
        return out.reshape(raw.shape)


class TaskCalibration(ABC):
    """One task's calibration kind: owns its check, its apply and its serialisation.

    A new kind (temperature scaling, a parametric fit) is one subclass decorated
    with ``@calibration_kind``; ``Calibrator`` and ``calibration.json`` need nothing
    else. ``TaskCalibration.of(method, tables)`` builds a registered kind by name.
    """

    method: ClassVar[str]
    tables: Mapping[int, LookupTable] = {}

    @staticmethod
    def of(method: str = "none", tables: Mapping[int, LookupTable] | None = None) -> "TaskCalibration":
        if method not in CALIBRATION_KINDS:
            raise ValueError(f"unknown calibration method {method!r}; known: {list(CALIBRATION_KINDS)}")
        return CALIBRATION_KINDS[method].from_tables(dict(tables or {}))

    @classmethod
    @abstractmethod
    def from_tables(cls, tables: dict[int, LookupTable]) -> "TaskCalibration": ...

    @abstractmethod
    def check(self, task: TaskSpec) -> None:
        """Raise ValueError if this calibration cannot serve ``task``."""

    @abstractmethod
    def apply(self, raw: np.ndarray) -> np.ndarray:
        """raw float [B, classes] -> calibrated float64 [B, classes] (NaN rows fall back)."""

    def uncovered_classes(self, task: TaskSpec) -> list[int]:
        """Classes of ``task`` this calibration leaves raw (seed 000 allows it; publishing does not)."""
        return []

    def fingerprint(self, digest: Any) -> None:
        """Feed what determines this calibration's output into ``digest``."""
        for column in sorted(self.tables):
            digest.update(self.tables[column].points().tobytes())

    def save(self, directory: Path, task: str) -> dict[str, Any]:
        """Write this calibration's files into ``directory``; returns its calibration.json entry."""
        tables = {}
        for column, table in sorted(self.tables.items()):
            filename = f"{task}_class_{column}.npy"
            np.save(directory / filename, table.points(), allow_pickle=False)
            tables[str(column)] = filename
        return {"method": self.method, "tables": tables}

    @staticmethod
    def load(entry: Mapping[str, Any], directory: Path) -> "TaskCalibration":
        """The calibration a calibration.json entry describes, read by its registered kind."""
        method = entry["method"]
        if method not in CALIBRATION_KINDS:
            raise ValueError(f"unknown calibration method {method!r}; known: {list(CALIBRATION_KINDS)}")
        return CALIBRATION_KINDS[method].from_entry(entry, directory)

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], directory: Path) -> "TaskCalibration":
        """Inverse of ``save``; by default its lookup tables (.npy, never pickle)."""
        tables = {int(column): LookupTable.from_points(np.load(directory / _table_file(filename), allow_pickle=False))
                  for column, filename in entry.get("tables", {}).items()}
        return cls.from_tables(tables)

    def _check_range(self) -> None:
        for column, table in sorted(self.tables.items()):
            low, high = float(table.y.min()), float(table.y.max())
            if low < -_PROBABILITY_TOLERANCE or high > 1 + _PROBABILITY_TOLERANCE:
                raise ValueError(f"the table for class {column} maps to [{low:g}, {high:g}], outside [0, 1]")


def _table_file(name: object) -> str:
    """A table's file name, only ever inside the calibration directory."""
    if not isinstance(name, str) or not name.endswith(".npy") or Path(name).name != name or name.startswith("."):
        raise ValueError(f"table file {name!r} must be a .npy file name inside the calibration directory")
    return name


CALIBRATION_KINDS: dict[str, type[TaskCalibration]] = {}
K = TypeVar("K", bound=type[TaskCalibration])


def calibration_kind(kind: K) -> K:
    """Register a calibration kind under its ``method`` name."""
    CALIBRATION_KINDS[kind.method] = kind
    return kind


@calibration_kind
@dataclass(frozen=True)
class NoCalibration(TaskCalibration):
    """Raw is returned as calibrated (the seed's no-op mode)."""

    method: ClassVar[str] = "none"

    @classmethod
    def from_tables(cls, tables: dict[int, LookupTable]) -> "NoCalibration":
        if tables:
            raise ValueError("method 'none' takes no tables")
        return cls()

    def check(self, task: TaskSpec) -> None:
        pass

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float64).copy()


@dataclass(frozen=True)
class TableCalibration(TaskCalibration):
    """A kind made of lookup tables, one per class column."""

    tables: Mapping[int, LookupTable] = field(default_factory=dict)

    @classmethod
    def from_tables(cls, tables: dict[int, LookupTable]) -> "TableCalibration":
        return cls(tables)


@calibration_kind
@dataclass(frozen=True)
class BinaryTable(TableCalibration):
    """One table on class 1 of a binary task; class 0 = 1 - p."""

    method: ClassVar[str] = "binary"

    def check(self, task: TaskSpec) -> None:
        self._check_range()
        if task.kind != "binary":
            raise ValueError(f"{self.method} calibration needs a binary task, {task.name!r} is {task.kind}")
        if set(self.tables) != {1}:
            raise ValueError(f"{self.method} calibration needs exactly one table, on class 1")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        positive = self.tables[1](np.asarray(raw, dtype=np.float64)[:, 1])
        return np.stack([1.0 - positive, positive], axis=1)


@calibration_kind
@dataclass(frozen=True)
class PercentileTable(BinaryTable):
    """Seed 000's percentile mode: applied like ``binary``, kept apart in reports."""

    method: ClassVar[str] = "percentile"


@calibration_kind
@dataclass(frozen=True)
class PerClassTables(TableCalibration):
    """One table per class (classes without one keep raw), then rows renormalised to sum to 1."""

    method: ClassVar[str] = "multiclass"

    def check(self, task: TaskSpec) -> None:
        self._check_range()
        bad = [c for c in self.tables if not 0 <= c < task.num_classes]
        if bad or not self.tables:
            raise ValueError(f"multiclass calibration needs tables for classes in [0, {task.num_classes}), got "
                             f"{sorted(self.tables)}")

    def uncovered_classes(self, task: TaskSpec) -> list[int]:
        return [c for c in range(task.num_classes) if c not in self.tables]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        calibrated = np.asarray(raw, dtype=np.float64).copy()
        for column, table in self.tables.items():
            calibrated[:, column] = table(calibrated[:, column])
        totals = calibrated.sum(axis=1, keepdims=True)
        usable = np.isfinite(totals) & (totals > 0)
        return np.where(usable, calibrated / np.where(usable, totals, 1.0), np.nan)


METHODS: tuple[str, ...] = tuple(CALIBRATION_KINDS)


@dataclass(frozen=True)
class CalibratedBatch:
    raw: dict[str, np.ndarray]          # task -> [B, classes], as given
    calibrated: dict[str, np.ndarray]   # task -> float64 [B, classes]
    labels: dict[str, np.ndarray]       # task -> int64 [B], argmax of raw (seed 000)
    fallback: np.ndarray                # bool [B, tasks]: calibrated == raw because calibration failed
    # task -> int64 [B], index into Calibrator.actions[task]: the policy's decision, else the label
    decisions: dict[str, np.ndarray] = field(default_factory=dict)


class Calibrator:
    """Applies every task's calibration to the model's concatenated probabilities, then
    its decision policy (``policy``; a task without one decides by its label)."""

    def __init__(self, tasks: Sequence[TaskSpec], calibrations: Mapping[str, TaskCalibration],
                 label: str = "", fallback_reasons: Mapping[str, str] | None = None,
                 model_fingerprint: str = "", policy: DecisionPolicy | None = None, policy_problem: str = "") -> None:
        unknown = sorted(set(calibrations) - {t.name for t in tasks})
        if unknown:
            raise BundleError("calibration", f"calibration for unknown tasks {unknown}")
        self.tasks = tuple(tasks)
        self.policy = policy or DecisionPolicy()
        self.policy_problem = policy_problem  # why the policy.json present was not used (decisions are labels)
        try:
            self.policy.check(self.tasks)
        except ValueError as error:
            raise BundleError(f"calibration/{POLICY_FILE}", str(error)) from None
        self._deciders = self.policy.deciders(self.tasks)
        # task -> what its decision indices name: the policy's actions, else the classes (the label)
        self.actions = {t.name: self._deciders[t.name].actions if t.name in self._deciders else t.classes
                        for t in self.tasks}
        self.model_fingerprint = model_fingerprint
        self.fallback_reasons = dict(fallback_reasons or {})
        self.calibrations: dict[str, TaskCalibration] = {}
        for task in self.tasks:
            calibration = calibrations.get(task.name, NoCalibration())
            try:
                calibration.check(task)
            except ValueError as exc:
                raise BundleError(f"calibration/{task.name}", str(exc)) from None
            self.calibrations[task.name] = calibration
        fingerprint = self.fingerprint()
        self.label = "" if label == fingerprint else label  # older bundles stored the fingerprint itself
        if self.fallback_reasons or self.policy_problem:  # tables or policy not used: the version says so
            self.label = "unavailable"
        self.version = f"{self.label}@{fingerprint}" if self.label else fingerprint
        self._columns = task_columns(self.tasks)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for task in self.tasks:
            calibration = self.calibrations[task.name]
            digest.update(f"{task.name}:{calibration.method}".encode())
            calibration.fingerprint(digest)
        if self.policy:  # a calibration without a policy keeps the fingerprint it always had
            digest.update(b"policy:" + self.policy.canonical())
        return digest.hexdigest()[:12]

    def calibrate_task(self, task: TaskSpec, task_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One task's raw [B, classes] -> (calibrated float64, failed rows): rows the tables
        cannot calibrate (or every row, for a task whose tables did not load) are raw."""
        batch = task_raw.shape[0]
        if task.name in self.fallback_reasons:
            return task_raw.astype(np.float64), np.ones(batch, dtype=bool)
        try:
            task_calibrated = self.calibrations[task.name].apply(task_raw)
            failed = ~np.isfinite(task_calibrated).all(axis=1)
        except Exception:  # noqa: BLE001 - any failure degrades to raw, flagged
            task_calibrated, failed = task_raw.astype(np.float64), np.ones(batch, dtype=bool)
        task_calibrated[failed] = task_raw[failed]
        return task_calibrated, failed

    def decide(self, task: TaskSpec, calibrated: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Decision indices into ``actions[task.name]``: the policy's, or the labels."""
        decider = self._deciders.get(task.name)
        return labels if decider is None else decider.decide(calibrated)

    def apply(self, probabilities: np.ndarray) -> CalibratedBatch:
        probabilities = np.asarray(probabilities)
        batch = probabilities.shape[0]
        raw, calibrated, labels, decisions = {}, {}, {}, {}
        fallback = np.zeros((batch, len(self.tasks)), dtype=bool)
        for index, task in enumerate(self.tasks):
            task_raw = probabilities[:, self._columns[task.name]]
            task_calibrated, failed = self.calibrate_task(task, task_raw)
            raw[task.name] = task_raw
            calibrated[task.name] = task_calibrated
            labels[task.name] = task_raw.argmax(axis=1).astype(np.int64)
            decisions[task.name] = self.decide(task, task_calibrated, labels[task.name])
            fallback[:, index] = failed
        return CalibratedBatch(raw, calibrated, labels, fallback, decisions)

    # -- persistence -----------------------------------------------------------
    def save(self, directory: Path, model_fingerprint: str | None = None) -> None:
        """``model_fingerprint``: the model these tables are for (default: the one loaded with them).
        The decision policy goes to ``policy.json`` (removed when there is none)."""
        directory.mkdir(parents=True, exist_ok=True)
        entries = {task.name: self.calibrations[task.name].save(directory, task.name) for task in self.tasks}
        self.policy.save(directory)
        payload: dict[str, Any] = {"label": self.label, "tasks": entries}
        fitted_for = self.model_fingerprint if model_fingerprint is None else model_fingerprint
        if fitted_for:
            payload["model_fingerprint"] = fitted_for
        (directory / CALIBRATION_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, tasks: Sequence[TaskSpec], strict: bool = False) -> "Calibrator":
        """Load ``directory/calibration.json`` and its tables.

        No directory or no ``calibration.json``: raw pass-through for every task.
        A corrupt file or table makes that task (or every task) fall back to raw
        with a reason, unless ``strict``, where it raises ``BundleError``. So does a
        decision policy (``policy.json``) that cannot be read or does not fit the tasks:
        ``strict``, BundleError; else every task decides by its label, ``policy_problem``
        says why and the version is labelled "unavailable".
        """
        policy, problem = _policy_for(directory, tasks, strict)
        path = directory / CALIBRATION_FILE
        if not path.exists():
            return cls(tasks, {}, policy=policy, policy_problem=problem)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            entries = payload["tasks"]
            label = str(payload.get("label", payload.get("version", "")))
            fitted_for = str(payload.get("model_fingerprint", ""))
            if not isinstance(entries, dict):
                raise TypeError("'tasks' must be an object")
        except (ValueError, KeyError, TypeError, OSError) as exc:
            if strict:
                raise BundleError("calibration", f"unreadable {path}: {exc!r}") from None
            reason = f"unreadable {path.name}: {exc!r}"
            return cls(tasks, {}, label="unavailable", fallback_reasons={t.name: reason for t in tasks},
                       policy=policy, policy_problem=problem)
        calibrations, reasons = {}, {}
        known = {t.name: t for t in tasks}
        for name, entry in entries.items():
            try:
                if name not in known:
                    raise ValueError(f"no task named {name!r}")
                calibration = TaskCalibration.load(entry, directory)
                calibration.check(known[name])
                calibrations[name] = calibration
            except Exception as exc:  # noqa: BLE001 - a broken table must not take the server down
                if strict:
                    raise BundleError(f"calibration/{name}", f"{type(exc).__name__}: {exc}") from None
                if name in known:
                    reasons[name] = f"{type(exc).__name__}: {exc}"
        return cls(tasks, calibrations, label=label, fallback_reasons=reasons, model_fingerprint=fitted_for,
                   policy=policy, policy_problem=problem)


def load_policy(directory: Path) -> DecisionPolicy:
    """A calibration directory's decision policy (empty without ``policy.json``); BundleError
    naming the file when it cannot be read."""
    try:
        return DecisionPolicy.load(directory)
    except ValueError as error:
        raise BundleError(f"calibration/{POLICY_FILE}", str(error)) from None


def _policy_for(directory: Path, tasks: Sequence[TaskSpec], strict: bool) -> tuple[DecisionPolicy, str]:
    """(the directory's policy, "") or, not ``strict``, (no policy, why not) for one that cannot
    be read or does not fit ``tasks``; ``strict``: BundleError."""
    try:
        policy = load_policy(directory)
        policy.check(tasks)
    except (BundleError, ValueError) as error:
        problem = error.problem if isinstance(error, BundleError) else str(error)
        if strict:
            raise BundleError(f"calibration/{POLICY_FILE}", problem) from None
        return DecisionPolicy(), problem
    return policy, ""


def sample_table(predict: Any, points: int = 1000, low: float = 0.0, high: float = 1.0) -> LookupTable:
    """Turn a fitted 1-D calibration function into the seed's lookup table format."""
    x = np.linspace(low, high, points)
    y = np.clip(np.asarray(predict(x), dtype=np.float64), 0.0, 1.0)
    if not math.isfinite(float(y.sum())):
        raise ValueError("calibration function produced non-finite values")
    return LookupTable(x, y)
