"""Choosing a task's decision policy (``tce_backends.decisions``) from labelled, calibrated
scores for a target, and measuring what a policy achieves, with bootstrap intervals.

Targets (``parse_target``; ``tce calibrate thresholds --target TASK=SPEC``):

- binary task, one condition per threshold, ``[ACTION:]precision>=P`` or ``[ACTION:]recall>=R``:
  the scores at or above that action's threshold (that action or a higher one) reach the
  precision or recall of class 1. ``precision>=P`` takes the lowest threshold that reaches
  it (most volume), ``recall>=R`` the highest (fewest rows). Actions are ordered by their
  thresholds; a bare ``NAME`` names the action below every threshold (default: class 0's
  name; an unnamed condition's action is class 1's name)::

      abuse=precision>=0.95                               legit < t <= abusive
      abuse=allow,review:recall>=0.95,block:precision>=0.9 allow < t1 <= review < t2 <= block

- multiclass task: ``[CLASS:]precision>=P`` / ``[CLASS:]recall>=R`` sets that class's (or,
  unnamed, every class's) minimum score: below it the top class abstains. ``precision``
  takes the lowest minimum that reaches it, ``recall`` the highest; a bare ``NAME`` names the
  abstain action (default ``abstain``)::

      reason=precision>=0.8        reason=harassment:precision>=0.9,unsure

- a cost matrix (minimum total cost on the file), ``cost:`` then per action its cost for
  each true class, ``/``-separated in class order. Binary: two or more actions, listed in
  score order (lowest first), e.g. ``abuse=cost:allow=0/10,review=1/1,block=4/0``; an action
  that no threshold would give a row is left out. Multiclass: ``cost:ABSTAIN=C`` (or one
  cost per true class): a wrong class costs 1, the right one 0, abstaining C.

Scores are searched as served (rounded to float32), so the thresholds chosen decide a served
score as they decided it here. Intervals are 95% percentile intervals over records drawn
with replacement (seeded), at the thresholds chosen; the thresholds were chosen on the same
records, so expect a little less on new ones.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import numpy as np

from tce_backends.decisions import DEFAULT_ABSTAIN, ArgmaxPolicy, TaskPolicy, ThresholdPolicy, short_float32
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec

Metric = Literal["precision", "recall"]
METRICS: tuple[str, ...] = ("precision", "recall")
LEVEL = 0.95
_CONDITION = re.compile(r"(?:(?P<action>[^:=<>]+):)?(?P<metric>[a-z]+)\s*>=\s*(?P<value>\S+)")
_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Condition:
    """``[action:]metric>=value``: ``action`` None for an unnamed condition."""

    action: str | None
    metric: Metric
    value: float

    def __str__(self) -> str:
        return f"{self.action + ':' if self.action else ''}{self.metric}>={self.value:g}"


@dataclass(frozen=True)
class ConditionTarget:
    conditions: tuple[Condition, ...]
    bare: str | None = None   # binary: the action below every threshold; multiclass: the abstain action

    def __str__(self) -> str:
        return ",".join([*([self.bare] if self.bare else []), *(str(c) for c in self.conditions)])


@dataclass(frozen=True)
class CostTarget:
    costs: tuple[tuple[str, tuple[float, ...]], ...]  # (action, cost per true class), in the order given

    def __str__(self) -> str:
        return "cost:" + ",".join(f"{a}={'/'.join(f'{c:g}' for c in costs)}" for a, costs in self.costs)


Target = Union[ConditionTarget, CostTarget]


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{what}: {text!r} is not a finite number")
    return value


def _parse_cost(task: str, body: str) -> CostTarget:
    costs = []
    for item in filter(None, (part.strip() for part in body.split(","))):
        action, sep, values = item.partition("=")
        if not sep or not action.strip() or not values.strip():
            raise UsageError(f"--target {task}: cost entries are ACTION=COST/COST/..., got {item!r}")
        numbers = tuple(_number(v.strip(), f"--target {task}: cost of {action.strip()!r}") for v in values.split("/"))
        costs.append((action.strip(), numbers))
    if not costs:
        raise UsageError(f"--target {task}: 'cost:' needs ACTION=COST/COST/... entries")
    if len({a for a, _ in costs}) != len(costs):
        raise UsageError(f"--target {task}: an action is named twice in {body!r}")
    return CostTarget(tuple(costs))


def _parse_conditions(task: str, body: str) -> ConditionTarget:
    conditions, bare = [], []
    for item in filter(None, (part.strip() for part in body.split(","))):
        match = _CONDITION.fullmatch(item)
        if match is None:
            if re.search(r"[<>=:]", item):
                raise UsageError(f"--target {task}: {item!r} is not [ACTION:]precision>=P or [ACTION:]recall>=R")
            bare.append(item)
            continue
        metric = match.group("metric")
        if metric not in METRICS:
            raise UsageError(f"--target {task}: unknown metric {metric!r} in {item!r}; use precision or recall "
                             "(or cost:... for a cost matrix)")
        value = _number(match.group("value"), f"--target {task}: {metric}")
        if not 0.0 < value <= 1.0:
            raise UsageError(f"--target {task}: {metric}>={value:g} must be a probability in (0, 1]")
        action = match.group("action")
        conditions.append(Condition(action.strip() if action else None, metric, value))  # type: ignore[arg-type]
    if not conditions:
        raise UsageError(f"--target {task}: no condition in {body!r}; e.g. precision>=0.95, "
                         "block:precision>=0.9,review:recall>=0.95 or cost:allow=0/10,block=3/0")
    if len(bare) > 1:
        raise UsageError(f"--target {task}: one bare action name at most (the action below every threshold, or "
                         f"the abstain action), got {bare}")
    return ConditionTarget(tuple(conditions), bare[0] if bare else None)


def parse_target(text: str) -> tuple[str, Target]:
    """``TASK=SPEC`` (see the module's docstring) -> (task, target); UsageError naming the mistake."""
    task, sep, body = text.partition("=")
    task, body = task.strip(), body.strip()
    if not sep or not task or not body:
        raise UsageError(f"--target takes TASK=SPEC (e.g. abuse=precision>=0.95), got {text!r}")
    if body.startswith("cost:"):
        return task, _parse_cost(task, body[len("cost:"):])
    return task, _parse_conditions(task, body)


# -- measuring: a joint count of (action, true class) per record ---------------------------

@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v) for k, v in (("value", self.value), ("low", self.low),
                                                               ("high", self.high))}

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "-"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class ActionReport:
    """One action: its threshold (binary) or minimum (multiclass; None: no minimum), its share
    of the records, and, binary: precision and recall of class 1 at or above its threshold;
    multiclass: of its class among the records decided as it (None: not measured)."""

    action: str
    threshold: float | None
    records: int
    volume: Interval
    precision: Interval | None = None
    recall: Interval | None = None
    target: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "threshold": self.threshold, "records": self.records,
                "volume": self.volume.as_dict(), "precision": self.precision.as_dict() if self.precision else None,
                "recall": self.recall.as_dict() if self.recall else None, "target": self.target}


def joint_counts(assigned: np.ndarray, truth: np.ndarray, actions: int, classes: int) -> np.ndarray:
    """[actions, classes] counts of records per (action given, true class)."""
    return np.bincount(assigned * classes + truth, minlength=actions * classes).reshape(actions, classes)


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom else math.nan


def joint_metrics(joint: np.ndarray, binary: bool, cost: np.ndarray | None = None) -> np.ndarray:
    """Per action [volume, precision, recall] (NaN: not defined), plus the mean cost as a last row.

    Binary: actions in score order, precision and recall of class 1 at or above each action.
    Multiclass: action i < classes is class i (precision and recall of it); others abstain."""
    total = joint.sum()
    actions, classes = joint.shape
    out = np.full((actions + 1, 3), np.nan)
    out[:actions, 0] = joint.sum(axis=1) / total if total else np.nan
    for index in range(actions):
        if binary and index > 0:
            above = joint[index:]
            out[index, 1] = _ratio(above[:, 1].sum(), above.sum())
            out[index, 2] = _ratio(above[:, 1].sum(), joint[:, 1].sum())
        elif not binary and index < classes:
            out[index, 1] = _ratio(joint[index, index], joint[index].sum())
            out[index, 2] = _ratio(joint[index, index], joint[:, index].sum())
    if cost is not None and total:
        out[actions, 0] = float((joint * cost).sum() / total)
    return out


@dataclass(frozen=True)
class Measured:
    actions: tuple[ActionReport, ...]
    mean_cost: Interval | None


def measure(assigned: np.ndarray, truth: np.ndarray, actions: Sequence[str], classes: int, binary: bool,
            thresholds: Sequence[float | None], targets: Sequence[str] = (), cost: np.ndarray | None = None,
            samples: int = 200, seed: int = 0) -> Measured:
    """What the decisions ``assigned`` (index into ``actions``) achieve on records of class
    ``truth``, with bootstrap intervals over ``samples`` resamples of the records."""
    assigned = np.asarray(assigned, dtype=np.int64)
    truth = np.asarray(truth, dtype=np.int64)
    point = joint_metrics(joint_counts(assigned, truth, len(actions), classes), binary, cost)
    rng = np.random.default_rng(seed)
    drawn = np.empty((samples, *point.shape))
    rows = assigned.shape[0]
    for sample in range(samples):
        pick = rng.integers(0, rows, rows)
        drawn[sample] = joint_metrics(joint_counts(assigned[pick], truth[pick], len(actions), classes), binary, cost)
    tail = (1 - LEVEL) / 2 * 100

    def interval(row: int, column: int) -> Interval:
        values = drawn[:, row, column]
        values = values[~np.isnan(values)]
        if not values.size:
            return Interval(point[row, column], math.nan, math.nan)
        low, high = np.percentile(values, [tail, 100 - tail])
        return Interval(float(point[row, column]), float(low), float(high))

    counts = np.bincount(assigned, minlength=len(actions))
    reports = []
    for index, action in enumerate(actions):
        defined = not np.isnan(point[index, 1]) or (binary and index > 0) or (not binary and index < classes)
        reports.append(ActionReport(action, thresholds[index], int(counts[index]), interval(index, 0),
                                    interval(index, 1) if defined else None, interval(index, 2) if defined else None,
                                    targets[index] if index < len(targets) else ""))
    return Measured(tuple(reports), interval(len(actions), 0) if cost is not None else None)


# -- choosing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskChoice:
    task: str
    target: str
    policy: TaskPolicy
    rows: int
    measured: Measured
    notes: tuple[str, ...] = ()


def served_scores(calibrated: np.ndarray) -> np.ndarray:
    """Calibrated scores as the server sends them (float32), as float64."""
    return np.asarray(calibrated, dtype=np.float32).astype(np.float64)


def _at_or_above(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores ascending, rows at or above each, positives at or above each)."""
    order = np.argsort(score, kind="stable")
    ordered, hits = score[order], positive[order].astype(np.int64)
    values, first = np.unique(ordered, return_index=True)
    rows = ordered.size - first
    positives = hits.sum() - np.concatenate([[0], np.cumsum(hits)])[first]
    return values, rows, positives


def _threshold_for(task: TaskSpec, condition: Condition, score: np.ndarray, positive: np.ndarray) -> float:
    """The threshold a binary condition takes (see the module's docstring)."""
    total = int(positive.sum())
    if total == 0:
        raise UsageError(f"task {task.name!r}: no record of class {task.classes[1]!r} in the file: {condition} "
                         "cannot be measured")
    values, rows, positives = _at_or_above(score, positive)
    measured = positives / rows if condition.metric == "precision" else positives / total
    meets = np.flatnonzero(measured >= condition.value - _TOLERANCE)
    if not meets.size:
        best = int(np.argmax(measured))
        raise UsageError(f"task {task.name!r}: {condition} cannot be reached on this file: the highest "
                         f"{condition.metric} at any threshold is {measured[best]:.3f} (at or above "
                         f"{values[best]:.4g}, {rows[best]} records)")
    return short_float32(values[meets[0] if condition.metric == "precision" else meets[-1]])


def _binary_conditions(task: TaskSpec, target: ConditionTarget, score: np.ndarray, positive: np.ndarray
                       ) -> tuple[ThresholdPolicy, tuple[str, ...]]:
    unnamed = [c for c in target.conditions if c.action is None]
    if unnamed and len(target.conditions) > 1:
        raise UsageError(f"task {task.name!r}: with several conditions each names its action (ACTION:metric>=P)")
    chosen = sorted(((_threshold_for(task, c, score, positive), c.action or task.classes[1], str(c))
                     for c in target.conditions))
    for (low, a, _), (high, b, _) in zip(chosen, chosen[1:], strict=False):
        if high <= low:
            raise UsageError(f"task {task.name!r}: {a} and {b} take the same threshold {low:.4g}: the action "
                             "between them would never be chosen; loosen one of the two targets")
    base = target.bare or task.classes[0]
    return _policy(task, tuple(t for t, _, _ in chosen), (base, *(a for _, a, _ in chosen))), \
        ("", *(c for _, _, c in chosen))


def _policy(task: TaskSpec, thresholds: tuple[float, ...], actions: tuple[str, ...]) -> ThresholdPolicy:
    try:
        return ThresholdPolicy(thresholds, actions)
    except ValueError as error:
        raise UsageError(f"task {task.name!r}: {error}") from None


def _cost_matrix(task: TaskSpec, target: CostTarget) -> np.ndarray:
    rows = []
    for action, costs in target.costs:
        if len(costs) != task.num_classes:
            raise UsageError(f"task {task.name!r}: cost of {action!r} has {len(costs)} value(s), one per class is "
                             f"needed ({'/'.join(task.classes)})")
        rows.append(costs)
    return np.asarray(rows, dtype=np.float64)


def _binary_cost(task: TaskSpec, target: CostTarget, score: np.ndarray, truth: np.ndarray
                 ) -> tuple[ThresholdPolicy, np.ndarray, list[str]]:
    """Thresholds t1 <= ... that minimise the total cost when the rows at or above t_k take
    action k (actions in the order given): a dynamic programme over the distinct scores."""
    cost = _cost_matrix(task, target)
    if cost.shape[0] < 2:
        raise UsageError(f"task {task.name!r}: a binary cost target needs two or more actions (in score order)")
    values, groups = np.unique(score, return_inverse=True)
    per_value = np.stack([np.bincount(groups, weights=cost[a, truth], minlength=values.size)
                          for a in range(cost.shape[0])])                    # [actions, distinct scores]
    cuts = best_cuts(per_value)
    ends = [*cuts[1:], values.size]
    thresholds, actions, notes = [], [target.costs[0][0]], []
    for index, (start, end) in enumerate(zip(cuts, ends, strict=True), start=1):
        name = target.costs[index][0]
        if start >= end:  # an empty band: no record is cheaper with this action
            notes.append(f"{name}: no record is decided more cheaply by it: left out of the policy")
            continue
        thresholds.append(short_float32(values[start]))
        actions.append(name)
    if not thresholds:
        raise UsageError(f"task {task.name!r}: at these costs {actions[0]!r} is the cheapest decision for every "
                         "record: a policy needs at least one threshold; change the costs")
    kept = [next(i for i, (a, _) in enumerate(target.costs) if a == name) for name in actions]
    return _policy(task, tuple(thresholds), tuple(actions)), cost[kept], notes


def best_cuts(per_value: np.ndarray) -> list[int]:
    """Cut positions c1 <= ... <= c_{K-1} over the distinct scores (ascending) that minimise
    sum_k per_value[k, c_k:c_{k+1}] (c_0 = 0, c_K = n); ``per_value``: [K, n] cost of each
    action for the records at each distinct score."""
    actions, n = per_value.shape
    prefix = np.concatenate([np.zeros((actions, 1)), np.cumsum(per_value, axis=1)], axis=1)  # [K, n + 1]
    best = prefix[0].copy()  # best[j]: cheapest way to give actions 0..k the first j distinct scores
    starts = []
    for k in range(1, actions):
        candidate = best - prefix[k]  # action k's band starting at i
        lowest = np.minimum.accumulate(candidate)
        starts.append(_first_minimum(candidate, lowest))
        best = prefix[k] + lowest
    cuts, j = [], n
    for where in reversed(starts):
        j = int(where[j])
        cuts.append(j)
    return list(reversed(cuts))


def _first_minimum(values: np.ndarray, lowest: np.ndarray) -> np.ndarray:
    """For each j, the first index i <= j at which ``values[:j + 1]`` reaches its minimum
    (``lowest``: its running minimum); a tie keeps the earlier index."""
    index = np.arange(values.size)
    new = np.concatenate([[True], values[1:] < lowest[:-1]])
    return np.maximum.accumulate(np.where(new, index, 0))


def _multiclass_minimum(task: TaskSpec, condition: Condition, klass: int, top: np.ndarray, score: np.ndarray,
                        truth: np.ndarray) -> float:
    """The minimum of one class for a condition (0: none needed)."""
    mine = top == klass
    total = int((truth == klass).sum())
    if total == 0 and condition.metric == "recall":
        raise UsageError(f"task {task.name!r}: no record of class {task.classes[klass]!r} in the file: "
                         f"{task.classes[klass]}:{condition.metric}>={condition.value:g} cannot be measured")
    values, rows, hits = _at_or_above(score[mine], truth[mine] == klass)
    measured = hits / rows if condition.metric == "precision" else hits / max(total, 1)
    meets = np.flatnonzero(measured >= condition.value - _TOLERANCE)
    what = f"{task.classes[klass]}:{condition.metric}>={condition.value:g}"
    if not meets.size:
        if not values.size:
            raise UsageError(f"task {task.name!r}: {what} cannot be reached on this file: no record has "
                             f"{task.classes[klass]!r} as its top class")
        best = int(np.argmax(measured))
        raise UsageError(f"task {task.name!r}: {what} cannot be reached on this file: the highest {condition.metric} "
                         f"of any minimum is {measured[best]:.3f} (at {values[best]:.4g}, {rows[best]} records)")
    index = int(meets[0] if condition.metric == "precision" else meets[-1])
    return 0.0 if index == 0 else short_float32(values[index])


def _multiclass_conditions(task: TaskSpec, target: ConditionTarget, calibrated: np.ndarray, truth: np.ndarray
                           ) -> tuple[ArgmaxPolicy, tuple[str, ...], list[str]]:
    top = calibrated.argmax(axis=1)
    score = calibrated[np.arange(calibrated.shape[0]), top]
    per_class: dict[int, Condition] = {}
    notes = []
    for condition in target.conditions:
        if condition.action is None:  # every class that is some record's top class
            absent = [task.classes[k] for k in range(task.num_classes) if not (top == k).any()]
            notes += [f"{name}: no record has it as its top class: no minimum set" for name in absent]
            per_class.update({k: condition for k in range(task.num_classes)
                              if k not in per_class and task.classes[k] not in absent})
            continue
        if condition.action not in task.classes:
            raise UsageError(f"task {task.name!r}: {condition}: {condition.action!r} is not a class; the classes are "
                             f"{list(task.classes)}")
        per_class[task.classes.index(condition.action)] = condition
    minimum = {}
    for klass, condition in sorted(per_class.items()):
        floor = _multiclass_minimum(task, condition, klass, top, score, truth)
        if floor > 0:
            minimum[task.classes[klass]] = floor
    targets = tuple(str(per_class[k]) if k in per_class else "" for k in range(task.num_classes))
    return _argmax_policy(task, minimum, target.bare or DEFAULT_ABSTAIN), targets, notes


def _argmax_policy(task: TaskSpec, minimum: dict[str, float], abstain: str) -> ArgmaxPolicy:
    try:
        policy = ArgmaxPolicy(minimum, abstain)
        policy.check(task)
    except ValueError as error:
        raise UsageError(f"task {task.name!r}: {error}") from None
    return policy


def _multiclass_cost(task: TaskSpec, target: CostTarget, calibrated: np.ndarray, truth: np.ndarray
                     ) -> tuple[ArgmaxPolicy, np.ndarray]:
    if len(target.costs) != 1:
        raise UsageError(f"task {task.name!r}: a multiclass cost target is cost:ABSTAIN=C (or one cost per true "
                         "class): a wrong class costs 1, the right one 0")
    abstain, costs = target.costs[0]
    abstain_cost = np.full(task.num_classes, costs[0]) if len(costs) == 1 else \
        _cost_matrix(task, target)[0]
    top = calibrated.argmax(axis=1)
    score = calibrated[np.arange(calibrated.shape[0]), top]
    minimum = {}
    for klass in range(task.num_classes):
        mine = top == klass
        if not mine.any():
            continue
        decided = (truth[mine] != klass).astype(np.float64)      # cost when it decides the class
        withheld = abstain_cost[truth[mine]]                      # cost when it abstains
        values, groups = np.unique(score[mine], return_inverse=True)
        per_value = np.stack([np.bincount(groups, weights=withheld, minlength=values.size),
                              np.bincount(groups, weights=decided, minlength=values.size)])
        (cut,) = best_cuts(per_value)
        if cut >= values.size:  # abstaining is cheaper for every record: a minimum above them all
            minimum[task.classes[klass]] = min(short_float32(np.nextafter(np.float32(values[-1]), np.float32(2))),
                                               1.0)
        elif cut > 0:
            minimum[task.classes[klass]] = short_float32(values[cut])
    matrix = np.vstack([1.0 - np.eye(task.num_classes), abstain_cost[None, :]])
    return _argmax_policy(task, minimum, abstain), matrix


def choose_policy(task: TaskSpec, calibrated: np.ndarray, truth: np.ndarray, target: Target,
                  samples: int = 200, seed: int = 0) -> TaskChoice:
    """The policy ``target`` asks for, from calibrated scores [records, classes] and true
    class indices, with what it achieves on them."""
    calibrated = served_scores(calibrated)
    truth = np.asarray(truth, dtype=np.int64)
    if calibrated.ndim != 2 or calibrated.shape[1] != task.num_classes or calibrated.shape[0] != truth.shape[0]:
        raise UsageError(f"task {task.name!r}: scores of shape {list(calibrated.shape)} for {truth.shape[0]} labels")
    if not calibrated.shape[0]:
        raise UsageError(f"task {task.name!r}: no records to choose thresholds on")
    if not (np.isfinite(calibrated).all() and calibrated.min() >= 0 and calibrated.max() <= 1):
        raise UsageError(f"task {task.name!r}: calibrated scores must be probabilities in [0, 1] in every record")
    cost, notes, targets = None, [], ()
    policy: TaskPolicy
    if task.kind == "binary" and isinstance(target, ConditionTarget):
        policy, targets = _binary_conditions(task, target, calibrated[:, 1], truth == 1)
    elif task.kind == "binary":
        assert isinstance(target, CostTarget)
        policy, cost, notes = _binary_cost(task, target, calibrated[:, 1], truth)
    elif isinstance(target, ConditionTarget):
        policy, targets, notes = _multiclass_conditions(task, target, calibrated, truth)
    else:
        policy, cost = _multiclass_cost(task, target, calibrated, truth)
    decider = policy.decider(task)
    assigned = decider.decide(calibrated)
    measured = measure(assigned, truth, decider.actions, task.num_classes, task.kind == "binary",
                       policy_thresholds(policy, task), targets, cost, samples, seed)
    return TaskChoice(task.name, str(target), policy, int(truth.shape[0]), measured, tuple(notes))


def policy_thresholds(policy: TaskPolicy, task: TaskSpec) -> tuple[float | None, ...]:
    """Per action: the lowest score that takes it (binary; None for the first action), or the
    class's minimum (multiclass; None: no minimum, and for the abstain action)."""
    if isinstance(policy, ThresholdPolicy):
        return (None, *policy.thresholds)
    return (*(policy.minimum.get(c) for c in task.classes), None)


# -- measuring decisions already taken (tce evaluate) -----------------------------------------

def order_actions(task: TaskSpec, decisions: np.ndarray, score: np.ndarray, policy: TaskPolicy | None
                  ) -> tuple[tuple[str, ...], tuple[float | None, ...]]:
    """The actions of ``decisions`` in order, with each one's threshold or minimum: the policy's
    when it names every action seen; else, binary: by the median class-1 score of their records
    (each from the lowest score seen with it), multiclass: the classes, then any other action."""
    seen = sorted(set(decisions.tolist()))
    if policy is not None:
        actions = policy.decider(task).actions
        if set(seen) <= set(actions):
            return actions, policy_thresholds(policy, task)
    if task.kind == "binary":
        medians = {a: float(np.median(score[decisions == a])) for a in seen}
        actions = tuple(sorted(seen, key=lambda a: (medians[a], a)))
        lowest = tuple(float(score[decisions == a].min()) for a in actions)
        return actions, (None, *lowest[1:])
    actions = (*task.classes, *(a for a in seen if a not in task.classes))
    return actions, (None,) * len(actions)


def measure_decisions(task: TaskSpec, decisions: np.ndarray, calibrated: np.ndarray, truth: np.ndarray,
                      policy: TaskPolicy | None = None, samples: int = 200, seed: int = 0) -> Measured:
    """What decisions (action names per record) achieve on records of class ``truth``."""
    decisions = np.asarray([str(d) for d in decisions], dtype=object)
    actions, thresholds = order_actions(task, decisions, served_scores(calibrated)[:, -1], policy)
    index = {action: i for i, action in enumerate(actions)}
    assigned = np.array([index[d] for d in decisions], dtype=np.int64)
    return measure(assigned, truth, actions, task.num_classes, task.kind == "binary", thresholds, samples=samples,
                   seed=seed)
