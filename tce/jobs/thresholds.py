"""``tce calibrate thresholds`` and ``tce calibrate policy``: a bundle's decision policy.

``choose`` reads a labelled predictions file (the formats of ``tce calibrate fit``:
``tce_client.columns``, ``--label TASK=COLUMN``), calibrates its raw scores with the bundle's
own tables (exactly the server's ``Calibrator``; calibrated columns in the file are not read,
so the thresholds fit the calibration they ship with), chooses each named task's policy for
its target (``tce.lib.thresholds``) and writes it into the bundle's ``calibration/policy.json``.
``set_policy`` writes policies given by hand (``allow<0.5<=review<0.9<=block``).

Either way the policy is checked against the bundle's tasks first and written staged: the
calibration directory is copied aside, ``policy.json`` replaced there and the copy swapped in
whole (``tce.lib.staging``), so the tables and anything else in it stay byte for byte. Tasks
not named keep their policy. The calibration version changes with the policy; ``tce
calibrate publish`` serves it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tce.lib.labels import label_column, score_columns, true_labels
from tce.lib.staging import staged_directory
from tce.lib.tables import read_frame
from tce.lib.thresholds import LEVEL, TaskChoice, choose_policy, parse_target
from tce_backends.bundle import CALIBRATION_DIR, Bundle
from tce_backends.calibration import Calibrator
from tce_backends.decisions import DEFAULT_ABSTAIN, ArgmaxPolicy, DecisionPolicy, TaskPolicy, ThresholdPolicy
from tce_backends.errors import BundleError, UsageError
from tce_backends.tasks import TaskSpec


@dataclass(frozen=True)
class ThresholdsResult:
    choices: tuple[TaskChoice, ...]
    calibrator: Calibrator        # the bundle's calibration with the chosen policy
    written: bool
    notes: tuple[str, ...] = ()


def _named_tasks(bundle: Bundle, names: Sequence[str], option: str) -> list[TaskSpec]:
    known = {t.name: t for t in bundle.manifest.tasks}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"{option} names unknown task(s) {unknown}; the bundle has {list(known)}")
    if len(set(names)) != len(names):
        raise UsageError(f"{option} names a task twice: {list(names)}")
    return [known[name] for name in names]


def _calibrated(bundle: Bundle, task: TaskSpec, raw: np.ndarray) -> np.ndarray:
    bad = ~(np.isfinite(raw) & (raw >= 0) & (raw <= 1)).all(axis=1)
    if bad.any():
        raise UsageError(f"task {task.name!r}: the predictions' scores must be probabilities in [0, 1]; row "
                         f"{int(np.flatnonzero(bad)[0])} (and {int(bad.sum()) - 1} more) has {raw[bad][0].tolist()}")
    calibrated, _ = bundle.calibrator.calibrate_task(task, raw)
    return calibrated


def choose(bundle_dir: Path, predictions: Path, targets: Sequence[str], labels: Mapping[str, str] | None = None,
           samples: int = 200, seed: int = 0, write: bool = True) -> ThresholdsResult:
    """Choose the policy of every task ``targets`` names (``TASK=SPEC``) and, unless ``write``
    is False, write it into the bundle."""
    if not targets:
        raise UsageError("give a --target TASK=SPEC per task, e.g. --target abuse=precision>=0.95")
    if samples < 0:
        raise UsageError(f"--bootstrap-samples must be >= 0, got {samples}")
    parsed = [parse_target(text) for text in targets]
    bundle = Bundle.load(bundle_dir)
    all_tasks = bundle.manifest.tasks
    chosen = _named_tasks(bundle, [task for task, _ in parsed], "--target")
    frame = read_frame(predictions)
    columns = {c.task.name: c for c in score_columns(chosen, frame, single=len(all_tasks) == 1)}
    results = []
    for task, (_, target) in zip(chosen, parsed, strict=True):
        truth = true_labels(frame, task, label_column(task, all_tasks, labels or {}))
        calibrated = _calibrated(bundle, task, columns[task.name].matrix(frame))
        results.append(choose_policy(task, calibrated, truth, target, samples, seed))
    notes = []
    if any(name in frame for c in columns.values() for name in c.calibrated_columns(len(all_tasks) == 1)):
        notes.append("the file's calibrated columns were not read: its raw scores were calibrated with the "
                     f"bundle's tables ({bundle.root / CALIBRATION_DIR})")
    policy = bundle.calibrator.policy.with_tasks({c.task: c.policy for c in results})
    calibrator = write_policy(bundle, policy) if write else _with_policy(bundle, policy)
    return ThresholdsResult(tuple(results), calibrator, write, tuple(notes))


def _with_policy(bundle: Bundle, policy: DecisionPolicy) -> Calibrator:
    """The bundle's calibration with ``policy`` (checked: BundleError naming the task at fault)."""
    current = bundle.calibrator
    return Calibrator(current.tasks, current.calibrations, label=current.label,
                      model_fingerprint=current.model_fingerprint, policy=policy)


def write_policy(bundle: Bundle, policy: DecisionPolicy) -> Calibrator:
    """Write ``policy`` into the bundle's calibration, staged (see the module's docstring)."""
    calibrator = _with_policy(bundle, policy)
    try:
        with staged_directory(bundle.root / CALIBRATION_DIR, copy_existing=True) as staging:
            policy.save(staging)
    except OSError as error:
        raise UsageError(f"cannot write {bundle.root / CALIBRATION_DIR}: {error.strerror or error}; the bundle's "
                         "calibration was left as it was") from None
    return calibrator


# -- policies by hand: tce calibrate policy -----------------------------------------------

_OPERATOR = re.compile(r"\s*(<=|<)\s*")
_BINARY_FORM = "ACTION<THRESHOLD<=ACTION..., e.g. allow<0.5<=review<0.9<=block (a score equal to a threshold " \
               "takes the upper action)"
_MULTICLASS_FORM = "argmax[,CLASS>=MINIMUM...][,ABSTAIN], e.g. argmax,harassment>=0.6,unsure"


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not a number") from None


def _binary_rule(task: str, rule: str) -> ThresholdPolicy:
    parts = _OPERATOR.split(rule.strip())
    shape_ok = len(parts) >= 5 and len(parts) % 4 == 1 and all(
        parts[i] == ("<" if i % 4 == 1 else "<=") for i in range(1, len(parts), 2))
    if not shape_ok:
        raise UsageError(f"--set {task}: {rule!r} is not {_BINARY_FORM}")
    thresholds = tuple(_number(parts[i], f"--set {task}") for i in range(2, len(parts), 4))
    actions = tuple(parts[i] for i in range(0, len(parts), 4))
    try:
        return ThresholdPolicy(thresholds, actions)
    except ValueError as error:
        raise UsageError(f"--set {task}: {error}") from None


def _multiclass_rule(task: str, rule: str) -> ArgmaxPolicy:
    head, *items = [part.strip() for part in rule.split(",")]
    if head != "argmax":
        raise UsageError(f"--set {task}: {rule!r} is not {_BINARY_FORM}, nor {_MULTICLASS_FORM}")
    minimum, abstain = {}, []
    for item in items:
        klass, sep, value = item.partition(">=")
        if sep:
            minimum[klass.strip()] = _number(value.strip(), f"--set {task}: minimum of {klass.strip()!r}")
        else:
            abstain.append(item)
    if len(abstain) > 1:
        raise UsageError(f"--set {task}: one abstain action at most, got {abstain}")
    try:
        return ArgmaxPolicy(minimum, abstain[0] if abstain else DEFAULT_ABSTAIN)
    except ValueError as error:
        raise UsageError(f"--set {task}: {error}") from None


def parse_rule(text: str) -> tuple[str, TaskPolicy]:
    """``TASK=RULE``: a binary task's ``allow<0.5<=review<0.9<=block``, a multiclass task's
    ``argmax,harassment>=0.6,unsure``."""
    task, sep, rule = text.partition("=")
    if not sep or not task.strip() or not rule.strip():
        raise UsageError(f"--set takes TASK=RULE ({_BINARY_FORM}; or {_MULTICLASS_FORM}), got {text!r}")
    task = task.strip()
    return task, _binary_rule(task, rule) if "<" in rule else _multiclass_rule(task, rule)


def set_policy(bundle_dir: Path, rules: Sequence[str] = (), clear: Sequence[str] = ()) -> Calibrator:
    """Set (``TASK=RULE``) or clear (``TASK``) tasks' policies; the rest keep theirs."""
    if not rules and not clear:
        raise UsageError("give --set TASK=RULE or --clear TASK (or neither, to print the policy: tce calibrate "
                         "policy --bundle B)")
    bundle = Bundle.load(bundle_dir)
    parsed = [parse_rule(text) for text in rules]
    named = [task for task, _ in parsed] + list(clear)
    _named_tasks(bundle, named, "--set/--clear")
    changed: dict[str, TaskPolicy | None] = {**dict(parsed), **dict.fromkeys(clear)}
    policy = bundle.calibrator.policy.with_tasks(changed)
    try:
        return write_policy(bundle, policy)
    except BundleError as error:
        raise UsageError(error.problem) from None


def describe_policy(calibrator: Calibrator) -> list[str]:
    """One line per task: what it decides."""
    lines = []
    for task in calibrator.tasks:
        policy = calibrator.policy.tasks.get(task.name)
        lines.append(f"  {task.name:<20} " + (policy.describe() if policy is not None else
                                               "no policy: decides its label (argmax of the raw scores)"))
    return lines


# -- what it prints -------------------------------------------------------------------------

def format_choice(choice: TaskChoice) -> str:
    policy = choice.policy
    lines = [f"task {choice.task}: {choice.rows} records, target {choice.target}",
             f"  policy: {policy.describe()}",
             f"  {'action':<18}{'from':>10}{'records':>9}  {'volume':<22}{'precision':<22}{'recall':<22}target"]
    binary = isinstance(policy, ThresholdPolicy)
    for report in choice.measured.actions:
        start = "-" if report.threshold is None else f"{report.threshold:.4g}"
        lines.append(f"  {report.action:<18}{start:>10}{report.records:>9}  {str(report.volume):<22}"
                     f"{str(report.precision or '-'):<22}{str(report.recall or '-'):<22}{report.target}")
    if choice.measured.mean_cost is not None:
        lines.append(f"  mean cost per record: {choice.measured.mean_cost}")
    lines.append("  (" + ("precision and recall of class 1 at or above each threshold" if binary else
                          "precision and recall of each class among the records decided as it")
                 + f"; [{LEVEL:.0%} bootstrap interval])")
    lines += [f"  note: {note}" for note in choice.notes]
    return "\n".join(lines)


def report_json(result: ThresholdsResult, bundle: Path, predictions: Path, samples: int, seed: int) -> str:
    return json.dumps({
        "bundle": str(bundle), "predictions": str(predictions), "written": result.written,
        "calibration_version": result.calibrator.version,
        "bootstrap": {"samples": samples, "seed": seed, "level": LEVEL},
        "tasks": {c.task: {"target": c.target, "policy": c.policy.to_dict(), "records": c.rows,
                           "actions": [a.as_dict() for a in c.measured.actions],
                           "mean_cost": c.measured.mean_cost.as_dict() if c.measured.mean_cost else None,
                           "notes": list(c.notes)} for c in result.choices},
        "notes": list(result.notes)}, indent=1)
