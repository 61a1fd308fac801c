"""Decisions on calibrated scores: one policy per task, shipped in the calibration.

A bundle's ``calibration/policy.json`` (``POLICY_FILE``) says what each task decides::

    {"format": 1, "tasks": {
      "abuse":  {"thresholds": [0.5, 0.9], "actions": ["allow", "review", "block"]},
      "reason": {"minimum": {"harassment": 0.6}, "abstain": "abstain"}}}

- a binary task: N increasing thresholds on the calibrated class-1 score, N + 1 named
  actions (``allow < 0.5 <= review < 0.9 <= block``): a score equal to a threshold takes
  the upper action;
- a multiclass task: the class with the highest calibrated score, unless a minimum is set
  for that class and its score is below it: then the abstain action (default ``abstain``);
- a task without a policy decides as before: its ``<task>_label``, the class name of the
  argmax of the *raw* scores (seed 000's ``output-label``).

Decisions are taken on the calibrated scores as served, in float32, against the thresholds
and minimums rounded to float32: a caller who applies the policy to the ``<task>_calibrated``
it received gets the same decision (0.9 in the policy is float32(0.9), which a served 0.9
equals). The
policy is part of the calibration: ``Calibrator.version`` covers it, so a changed policy is
a new calibration version, published and released with the tables.

A policy that cannot be applied (thresholds not increasing or outside [0, 1], a count of
actions that does not fit, a class or task the model does not have, an action name that is
not a plain word) is refused with ``ValueError`` naming the task and the field; the
calibrator turns it into ``BundleError``. Numpy only: this runs inside the calibrator step.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .tasks import TaskSpec

POLICY_FILE = "policy.json"
POLICY_FORMAT = 1
DEFAULT_ABSTAIN = "abstain"
# Action names travel as BYTES outputs, CSV cells and command-line words: plain words only.
ACTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _probability(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _action(name: object, where: str) -> str:
    if not isinstance(name, str) or not ACTION_NAME.fullmatch(name):
        raise ValueError(f"{where} must be a name of letters, digits, '_', '.' or '-' (at most 64, starting with a "
                         f"letter or digit), got {name!r}")
    return name


@dataclass(frozen=True)
class ThresholdPolicy:
    """Binary task: ``actions[k]`` for calibrated class-1 scores in [thresholds[k-1], thresholds[k])."""

    thresholds: tuple[float, ...]
    actions: tuple[str, ...]

    def __post_init__(self) -> None:
        thresholds = tuple(_probability(t, f"threshold {i + 1}") for i, t in enumerate(self.thresholds))
        actions = tuple(_action(a, f"action {i + 1}") for i, a in enumerate(self.actions))
        if not thresholds:
            raise ValueError("thresholds: at least one threshold is needed")
        if any(b <= a for a, b in zip(thresholds, thresholds[1:], strict=False)):
            raise ValueError(f"thresholds {list(thresholds)} must increase strictly")
        if len(actions) != len(thresholds) + 1:
            raise ValueError(f"actions: {len(thresholds)} threshold(s) need {len(thresholds) + 1} actions, got "
                             f"{len(actions)} {list(actions)}")
        if len(set(actions)) != len(actions):
            raise ValueError(f"actions {list(actions)} must be distinct")
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "actions", actions)

    def check(self, task: TaskSpec) -> None:
        if task.kind != "binary":
            raise ValueError(f"thresholds decide a binary task, {task.name!r} is {task.kind} (its policy takes "
                             "'minimum' and 'abstain')")

    def decider(self, task: TaskSpec) -> "Decider":
        return Decider(self.actions, thresholds=np.asarray(self.thresholds, dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "actions": list(self.actions)}

    def describe(self) -> str:
        """``allow < 0.5 <= review < 0.9 <= block``."""
        parts = [self.actions[0]]
        for threshold, action in zip(self.thresholds, self.actions[1:], strict=True):
            parts += [f"< {threshold:g} <=", action]
        return " ".join(parts)


@dataclass(frozen=True)
class ArgmaxPolicy:
    """Multiclass task: the top calibrated class, or ``abstain`` below that class's minimum."""

    minimum: Mapping[str, float] = field(default_factory=dict)  # class name -> lowest score that decides it
    abstain: str = DEFAULT_ABSTAIN

    def __post_init__(self) -> None:
        if not isinstance(self.minimum, Mapping):
            raise ValueError(f"minimum must map class names to probabilities, got {self.minimum!r}")
        minimum = {str(c): _probability(p, f"minimum of class {c!r}") for c, p in sorted(self.minimum.items())}
        object.__setattr__(self, "minimum", minimum)
        object.__setattr__(self, "abstain", _action(self.abstain, "abstain"))

    def check(self, task: TaskSpec) -> None:
        if task.kind != "multiclass":
            raise ValueError(f"'minimum' and 'abstain' decide a multiclass task, {task.name!r} is {task.kind} (its "
                             "policy takes 'thresholds' and 'actions')")
        unknown = sorted(set(self.minimum) - set(task.classes))
        if unknown:
            raise ValueError(f"minimum for unknown class(es) {unknown}; the classes are {list(task.classes)}")
        if self.abstain in task.classes:
            raise ValueError(f"abstain action {self.abstain!r} is also a class name; choose another")

    def decider(self, task: TaskSpec) -> "Decider":
        floors = np.array([self.minimum.get(c, 0.0) for c in task.classes], dtype=np.float32)
        return Decider((*task.classes, self.abstain), minimum=floors)

    def to_dict(self) -> dict[str, Any]:
        return {"minimum": dict(self.minimum), "abstain": self.abstain}

    def describe(self) -> str:
        floors = ", ".join(f"{c} >= {p:g}" for c, p in self.minimum.items())
        return "top calibrated class" + (f" if {floors}, else {self.abstain}" if floors else "")


TaskPolicy = Union[ThresholdPolicy, ArgmaxPolicy]


@dataclass(frozen=True)
class Decider:
    """A task's policy bound to its classes: calibrated scores -> index into ``actions``."""

    actions: tuple[str, ...]
    thresholds: np.ndarray | None = None  # binary, float32
    minimum: np.ndarray | None = None     # multiclass, float32, one per class (0: none)

    def decide(self, calibrated: np.ndarray) -> np.ndarray:
        """calibrated [B, classes] -> int64 [B], compared in float32 (as served); a row that
        is not a number gets the first action (binary) or abstains (multiclass)."""
        served = np.asarray(calibrated, dtype=np.float32)
        if self.thresholds is not None:
            score = served[:, 1]
            chosen = self.thresholds.searchsorted(score, side="right")  # thresholds <= score
            return np.where(np.isnan(score), 0, chosen).astype(np.int64)
        assert self.minimum is not None
        unusable = np.isnan(served).any(axis=1)
        top = np.where(unusable, 0, np.nan_to_num(served).argmax(axis=1))
        score = served[np.arange(served.shape[0]), top]
        abstain = unusable | (score < self.minimum[top])
        return np.where(abstain, len(self.minimum), top).astype(np.int64)


def task_policy_from_dict(entry: object) -> TaskPolicy:
    """One task's entry of policy.json; ValueError naming the field at fault."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"expected an object, got {entry!r}")
    keys = set(entry)
    if keys <= {"thresholds", "actions"} and keys:
        for name in ("thresholds", "actions"):
            if not isinstance(entry.get(name), list):
                raise ValueError(f"{name} must be a list, got {entry.get(name)!r}")
        return ThresholdPolicy(tuple(entry["thresholds"]), tuple(entry["actions"]))
    if keys <= {"minimum", "abstain"}:
        return ArgmaxPolicy(entry.get("minimum", {}), entry.get("abstain", DEFAULT_ABSTAIN))
    raise ValueError(f"fields {sorted(keys)}: a binary task's policy has 'thresholds' and 'actions', a multiclass "
                     "task's 'minimum' and 'abstain'")


@dataclass(frozen=True)
class DecisionPolicy:
    """Every task's policy (tasks not named decide by their label)."""

    tasks: Mapping[str, TaskPolicy] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def check(self, tasks: Sequence[TaskSpec]) -> None:
        """ValueError ("task 'abuse': ...") unless every policy fits a task of the model."""
        known = {t.name: t for t in tasks}
        for name, policy in self.tasks.items():
            if name not in known:
                raise ValueError(f"policy for unknown task {name!r}; the tasks are {list(known)}")
            try:
                policy.check(known[name])
            except ValueError as error:
                raise ValueError(f"task {name!r}: {error}") from None

    def deciders(self, tasks: Sequence[TaskSpec]) -> dict[str, Decider]:
        return {t.name: self.tasks[t.name].decider(t) for t in tasks if t.name in self.tasks}

    def with_tasks(self, changed: Mapping[str, TaskPolicy | None]) -> "DecisionPolicy":
        """This policy with ``changed`` tasks replaced (None: that task's policy removed)."""
        merged = {**self.tasks, **changed}
        return DecisionPolicy({name: policy for name, policy in merged.items() if policy is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "tasks": {name: p.to_dict() for name, p in sorted(self.tasks.items())}}

    def canonical(self) -> bytes:
        """What the calibration fingerprint covers: the policy's content, not its file's spacing."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, payload: object) -> "DecisionPolicy":
        if not isinstance(payload, Mapping) or not isinstance(payload.get("tasks"), Mapping):
            raise ValueError('expected {"format": 1, "tasks": {task: policy}}')
        if payload.get("format", POLICY_FORMAT) != POLICY_FORMAT or set(payload) - {"format", "tasks"}:
            raise ValueError(f"format {payload.get('format')!r} with fields {sorted(payload)} is not policy format "
                             f"{POLICY_FORMAT} ('format', 'tasks')")
        tasks = {}
        for name, entry in payload["tasks"].items():
            try:
                tasks[str(name)] = task_policy_from_dict(entry)
            except ValueError as error:
                raise ValueError(f"task {name!r}: {error}") from None
        return cls(tasks)

    def save(self, directory: Path) -> None:
        """Write ``directory/policy.json``, or remove it when there is no policy."""
        path = Path(directory) / POLICY_FILE
        if not self.tasks:
            path.unlink(missing_ok=True)
            return
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "DecisionPolicy":
        """``directory/policy.json``; an empty policy when there is none. ValueError when unreadable."""
        path = Path(directory) / POLICY_FILE
        if not path.is_file():
            return cls()
        try:
            payload = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (OSError, ValueError) as error:
            raise ValueError(f"unreadable: {error}") from None
        return cls.from_dict(payload)


def _no_constant(name: str) -> float:
    """JSON's NaN and Infinity are no probability: refused by name instead of parsed."""
    raise ValueError(f"{name} is not a number in [0, 1]")


def describe(policy: TaskPolicy | None) -> str:
    return "the label (argmax of raw scores)" if policy is None else policy.describe()


def short_float32(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value`` (what a threshold is compared as)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
