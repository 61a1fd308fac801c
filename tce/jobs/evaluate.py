"""``tce evaluate``: seed 002's evaluation job.

Labelled records are scored through the served ensemble (``tce predict``'s batch job,
resumable, into ``OUT/.scoring``), or an already scored predictions file is read.
For every task the raw and the calibrated scores are evaluated side by side
(``tce.lib.evaluation_metrics``), plots drawn (``tce.lib.plots``), and, given a previous
model's score column, the two models compared (seed 002's switches:
``tce.lib.seed_evaluation``). A predictions file without calibrated columns (seed 001's
``prob_class_<i>`` only) is evaluated on its raw scores, the calibrated metrics absent
(``null`` in ``metrics.json``). Beside the fixed thresholds 0.3/0.5/0.7, each task's decisions
are measured (``decisions`` in ``metrics.json``, per action: volume, precision and recall with
bootstrap intervals, ``tce.lib.thresholds``): the ``<task>_decision`` column as served, or,
for a file without it, the ``--bundle``'s decision policy applied to the calibrated columns.
``OUT`` receives ``eval_predictions.<fmt>``,
``metrics.json``, ``metrics_summary.txt``, the PNGs, seed 002's own layout in ``OUT/eval``
and ``OUT/metrics`` (``tce.lib.seed_evaluation``), and ``_SUCCESS`` and ``_HEALTH`` last.

``compare_release`` (``--compare-release N``): the same records are scored a second time by
release N of the served ensemble (its own model, ``<ensemble>-release-<N>``), and release N's
class-1 score of the compared task becomes the previous model's score column
(``release_<N>_score``: what release N serves, so calibrated when it calibrates that task,
else raw; its raw score is kept beside it as ``release_<N>_raw_score``), so the comparison
mode compares the current release with release N record by record (a release with new
calibration tables only shows in the calibrated metrics).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from tce.jobs.predict import PredictJob, run_predict
from tce.lib import evaluation_metrics as evaluation
from tce.lib import plots
from tce.lib import seed_evaluation as seed
from tce.lib.labels import true_labels
from tce.lib.parts import HEALTH, SUCCESS, write_markers
from tce.lib.rejects import RejectLimit
from tce.lib.seed_evaluation import ComparisonOptions
from tce.lib.tables import TableSource, file_format, read_frame, write_frame
from tce.lib.thresholds import LEVEL, measure_decisions
from tce_backends.bundle import CALIBRATION_DIR, Manifest
from tce_backends.calibration import load_policy
from tce_backends.contract import release_model_name
from tce_backends.decisions import DecisionPolicy
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec
from tce_client import DEFAULT_MODEL, CalibratedClassifierClient
from tce_client.columns import (
    VERSION_COLUMN,
    decision_column,
    probability_columns,
    tasks_in_columns,
    true_label_column,
)

log = logging.getLogger(__name__)

OUTPUT_STEM = "eval_predictions"
SCORING_DIR = ".scoring"


@dataclass(frozen=True)
class EvaluateJob:
    output: Path
    input: Path | None = None               # labelled records, scored through the server
    predictions: Path | None = None         # or an already scored predictions file
    bundle: Path | None = None              # with predictions: the tasks' names and classes
    labels: Mapping[str, str] = field(default_factory=dict)  # task -> label column
    id_field: str | None = None
    previous_score_field: str | None = None
    compare_task: str | None = None
    bins: int = 15
    bootstrap_samples: int = 200
    url: str | None = None
    protocol: str = "grpc"
    model: str = DEFAULT_MODEL
    format: str | None = None
    allow_missing_columns: bool = False
    chunk_rows: int = 1024
    max_in_flight: int = 8
    restart: bool = False
    batch_size: int | None = None            # records per request (tce predict's --batch-size)
    max_rejects: RejectLimit = RejectLimit()  # records that cannot be scored: left out of the metrics, up to this
    task: str | None = None                 # evaluate this task only, under seed 002's one-task names
    comparison: ComparisonOptions = field(default_factory=ComparisonOptions)
    compare_release: int | None = None      # also score with release N, compared as the previous model

    def __post_init__(self) -> None:
        if (self.input is None) == (self.predictions is None):
            raise UsageError("give --input (labelled records to score) or --predictions (a scored file), not both")
        if self.compare_release is not None:
            if self.input is None or self.compare_release < 1:
                raise UsageError("--compare-release N scores --input with release N (N >= 1) of the served ensemble")
            if self.previous_score_field != release_score_column(self.compare_release):
                raise UsageError("--compare-release is the previous model's score: drop --previous-score-field "
                                 "(and PREVIOUS_SCORE_FIELD)")
        if self.bundle is not None and self.predictions is None:
            raise UsageError("--bundle names the tasks of a --predictions file; with --input the server names them")
        if self.bins < 2:
            raise UsageError(f"--bins must be >= 2, got {self.bins}")
        if self.bootstrap_samples < 0:
            raise UsageError(f"--bootstrap-samples must be >= 0, got {self.bootstrap_samples}")


@dataclass(frozen=True)
class EvaluatedTask:
    spec: TaskSpec
    label_column: str
    scores: plots.TaskScores
    metrics: dict[str, dict[str, float] | None]   # "raw" / "calibrated" -> metrics (None: no calibrated scores)
    decisions: dict[str, Any] | None = None        # what its decisions achieve (None: the file has none)


@dataclass(frozen=True)
class EvaluationReport:
    records: int
    tasks: list[EvaluatedTask]
    comparison: dict[str, Any] | None
    calibration_versions: list[str]
    summary: str
    out: Path


def _selected(tasks: tuple[TaskSpec, ...], task: str | None) -> tuple[TaskSpec, ...]:
    if task is None:
        return tasks
    chosen = tuple(t for t in tasks if t.name == task)
    if not chosen:
        raise UsageError(f"--task {task!r} is not a task of this model; the tasks are {[t.name for t in tasks]}")
    return chosen


def _label_columns(tasks: tuple[TaskSpec, ...], overrides: Mapping[str, str], single: bool) -> dict[str, str]:
    """Label column per task; ``single``: the model has one task (labels in ``label``)."""
    if "*" in overrides:  # LABEL_FIELD (seed 002): the label column of the one task evaluated
        if len(tasks) != 1:
            raise UsageError(f"LABEL_FIELD names one label column, but {len(tasks)} tasks are evaluated: give "
                             "--label TASK=COLUMN per task, or --task")
        overrides = {tasks[0].name: overrides["*"]}
    unknown = sorted(set(overrides) - {t.name for t in tasks})
    if unknown:
        raise UsageError(f"--label names unknown tasks {unknown}; the tasks evaluated are {[t.name for t in tasks]}")
    return {t.name: overrides.get(t.name, true_label_column(t.name, single)) for t in tasks}


def _served_tasks(job: EvaluateJob) -> tuple[TaskSpec, ...]:
    with CalibratedClassifierClient(job.url, protocol=job.protocol, model=job.model) as client:  # type: ignore
        assert client.schema is not None
        return tuple(TaskSpec(t.name, t.kind, t.classes) for t in client.schema.tasks)


def _file_tasks(frame: pd.DataFrame) -> tuple[TaskSpec, ...]:
    """Tasks named by a predictions file's columns (``tce_client.columns``)."""
    found = tasks_in_columns(list(frame.columns))
    if not found:
        raise UsageError("the predictions file has no prob_class_<i> columns (or <task>_prob_class_<i>)")
    if None in found:
        # A one-task file names its task only in the predicted-label column, when it has one.
        named = [str(c)[:-len("_label")] for c in frame.columns if str(c).endswith("_label") and str(c) != "label"]
        name = named[0] if len(named) == 1 else "task"
        found = {name: found[None]}
    return tuple(TaskSpec(name, "binary" if k == 2 else "multiclass", tuple(str(i) for i in range(k)))
                 for name, k in found.items())


def _need_indices(frame: pd.DataFrame, labels: Mapping[str, str]) -> None:
    """Without a bundle the file says how many classes a task has, not their names."""
    for column in labels.values():
        if column in frame and not pd.api.types.is_numeric_dtype(frame[column]):
            raise UsageError(f"label column {column!r} holds class names: add --bundle BUNDLE to name the model's "
                             "classes (or give class indices)")


def _score(job: EvaluateJob, tasks: tuple[TaskSpec, ...], labels: dict[str, str], note: Callable[[str], None]
           ) -> Path:
    assert job.input is not None
    source = TableSource(job.input)
    for task in tasks:
        if labels[task.name] not in source.columns:
            raise UsageError(f"no label column {labels[task.name]!r} for task {task.name!r} in {job.input} "
                             f"(use --label {task.name}=COLUMN)")
    _check_label_values(source, tasks, labels, job.chunk_rows)
    previous = job.previous_score_field if job.compare_release is None else None  # release N's: scored below
    keep = tuple(dict.fromkeys([*labels.values(), *([previous] if previous else [])]))
    scoring = PredictJob(job.input, job.output / SCORING_DIR, url=job.url, protocol=job.protocol, model=job.model,
                         format=job.format, id_field=job.id_field, keep=keep,
                         allow_missing_columns=job.allow_missing_columns, chunk_rows=job.chunk_rows,
                         max_in_flight=job.max_in_flight, restart=job.restart, output_stem=OUTPUT_STEM,
                         batch_size=job.batch_size, max_rejects=job.max_rejects)
    result = run_predict(scoring, note=note)
    assert result.path is not None  # evaluate scores in one run, never as a shard
    if result.rejects_path is not None:  # kept beside the metrics (.scoring goes)
        kept = result.rejects_path.replace(job.output / result.rejects_path.name)
        note(f"note: {result.rejected} records could not be scored and are left out of the metrics; {kept} lists "
             "them (file, row, field, reason)")
    return result.path


def _check_label_values(source: TableSource, tasks: tuple[TaskSpec, ...], labels: Mapping[str, str],
                        chunk_rows: int) -> None:
    """Every label is a class of its task (name or index) before anything is scored: a wrong
    label column found after scoring would waste the whole run."""
    for chunk in source.chunks(max(chunk_rows, 4096)):
        frame = chunk.select(list(dict.fromkeys(labels.values()))).to_pandas()
        for task in tasks:
            true_labels(frame, task, labels[task.name])


def _previous_scores(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame:
        raise UsageError(f"the previous model's score column {column!r} (--previous-score-field or "
                         "PREVIOUS_SCORE_FIELD) is not a column of the predictions")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = int((values.isna() | (values < 0) | (values > 1)).sum())
    if bad:
        raise UsageError(f"the previous model's score column {column!r} needs a probability in [0, 1] in every row; "
                         f"{bad} rows have none")
    return values.to_numpy(dtype=np.float64)


def _compared_task(job: EvaluateJob, tasks: list[EvaluatedTask]) -> EvaluatedTask:
    binary = [t for t in tasks if t.spec.num_classes == 2]
    if job.compare_task is not None:
        chosen = [t for t in binary if t.spec.name == job.compare_task]
        if not chosen:
            raise UsageError(f"--compare-task {job.compare_task!r} is not a binary task; binary tasks: "
                             f"{[t.spec.name for t in binary]}")
        return chosen[0]
    if len(binary) != 1:
        raise UsageError("a previous model's score compares with one binary task: add --compare-task (one of "
                         f"{[t.spec.name for t in binary]})" if binary else
                         "a previous model's score needs a binary task; the tasks evaluated have none")
    return binary[0]


def _task_series(frame: pd.DataFrame, task: TaskSpec, single: bool) -> dict[str, np.ndarray]:
    """Raw probabilities, and calibrated ones when the file has every calibrated column
    (none: raw only, as seed 001 writes; some: a damaged file)."""
    series = {}
    for kind in ("raw", "calibrated"):
        names = probability_columns(task.name, task.num_classes, single, calibrated=kind == "calibrated")
        missing = [n for n in names if n not in frame]
        if kind == "calibrated" and len(missing) == len(names):
            continue
        if missing:
            hint = " (add them with 'tce calibrate apply', or drop them all to evaluate raw scores only)" \
                if kind == "calibrated" else ""
            raise UsageError(f"task {task.name!r}: the predictions lack the {kind} columns {missing}{hint}")
        series[kind] = frame[names].to_numpy(dtype=np.float64)
    return series


def _compare(job: EvaluateJob, frame: pd.DataFrame, evaluated: list[EvaluatedTask]) -> dict[str, Any]:
    assert job.previous_score_field is not None
    target = _compared_task(job, evaluated)
    previous = _previous_scores(frame, job.previous_score_field)
    scores, options = target.scores, job.comparison
    calibrated = scores.series["calibrated"][:, 1] if "calibrated" in scores.series else None
    comparison = {"task": target.spec.name, "previous_score_field": job.previous_score_field,
                  "detail": options.detail, "statistical_tests": options.statistical_tests,
                  **evaluation.compare(scores.labels, scores.series["raw"][:, 1], calibrated, previous, job.bins,
                                       job.bootstrap_samples, current=target.metrics, detail=options.detail,
                                       tests=options.statistical_tests)}
    if options.plots:  # the previous model's curves beside the new ones
        scores.series["previous"] = np.stack([1 - previous, previous], axis=1)
    return comparison


def _bundle_policy(job: EvaluateJob) -> DecisionPolicy:
    """The ``--bundle``'s decision policy (none without a bundle)."""
    return load_policy(Path(job.bundle) / CALIBRATION_DIR) if job.bundle is not None else DecisionPolicy()


def _task_decisions(job: EvaluateJob, frame: pd.DataFrame, task: TaskSpec, series: Mapping[str, np.ndarray],
                    truth: np.ndarray, policy: DecisionPolicy) -> dict[str, Any] | None:
    """What the task's decisions achieve: the ``<task>_decision`` column, else the bundle's policy
    applied to the calibrated scores; None when there are neither."""
    column, task_policy = decision_column(task.name), policy.tasks.get(task.name)
    if column in frame:
        decisions, source = frame[column].astype(str).to_numpy(dtype=object), f"the {column} column"
    elif task_policy is not None and "calibrated" in series:
        decider = task_policy.decider(task)
        decisions = np.array(decider.actions, dtype=object)[decider.decide(series["calibrated"])]
        source = "the bundle's decision policy applied to the calibrated columns"
    else:
        return None
    measured = measure_decisions(task, decisions, series.get("calibrated", series["raw"]), truth, task_policy,
                                 job.bootstrap_samples)
    return {"source": source, "policy": task_policy.describe() if task_policy is not None else None,
            "bootstrap": {"samples": job.bootstrap_samples, "level": LEVEL},
            "actions": [action.as_dict() for action in measured.actions]}


def evaluate_frame(job: EvaluateJob, frame: pd.DataFrame, tasks: tuple[TaskSpec, ...],
                   labels: Mapping[str, str], single: bool | None = None
                   ) -> tuple[list[EvaluatedTask], dict[str, Any] | None]:
    """Metrics per task (raw, and calibrated where present), its decisions and the comparison,
    from a scored frame; ``single``: the file names one task's columns unprefixed (default: one
    task given)."""
    single = len(tasks) == 1 if single is None else single
    evaluated = []
    policy = _bundle_policy(job)
    for task in tasks:
        series = _task_series(frame, task, single)
        truth = true_labels(frame, task, labels[task.name])
        scores = plots.TaskScores(task.name, task.classes, truth, series)
        metrics: dict[str, dict[str, float] | None] = {"raw": None, "calibrated": None}
        metrics.update({kind: evaluation.task_metrics(truth, probabilities, job.bins)
                        for kind, probabilities in series.items()})
        evaluated.append(EvaluatedTask(task, labels[task.name], scores, metrics,
                                       _task_decisions(job, frame, task, series, truth, policy)))
    if job.previous_score_field is None:
        return evaluated, None
    return evaluated, _compare(job, frame, evaluated)


def _draw(tasks: list[EvaluatedTask], comparison: dict[str, Any] | None, out: Path, bins: int) -> None:
    for task in tasks:
        name = task.spec.name
        plots.roc_curves(task.scores, out / f"roc_{name}.png")
        plots.pr_curves(task.scores, out / f"pr_{name}.png")
        plots.score_distributions(task.scores, out / f"score_distribution_{name}.png")
        plots.reliability_diagram(task.scores, out / f"reliability_{name}.png", bins)
        series = task.scores.series
        if comparison is not None and comparison["task"] == name and "previous" in series:  # COMPARISON_PLOTS
            served = "calibrated" if "calibrated" in series else "raw"
            plots.comparison_scatter(name, task.scores.labels, series[served][:, 1], series["previous"][:, 1],
                                     out / f"comparison_scatter_{name}.png", served)
            plots.comparison_distributions(name, task.scores.labels, series["raw"][:, 1], series["previous"][:, 1],
                                           out / f"comparison_distributions_{name}.png")


def _finite(value: Any) -> Any:
    """NaN (an undefined metric) as JSON null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _task_lines(task: EvaluatedTask, comparison: dict[str, Any] | None) -> list[str]:
    spec, raw_metrics, calibrated = task.spec, task.metrics["raw"], task.metrics["calibrated"]
    assert raw_metrics is not None
    previous = comparison["previous"] if comparison is not None and comparison["task"] == spec.name else None
    lines = ["", f"task {spec.name} ({spec.kind}: {', '.join(spec.classes)}), labels from '{task.label_column}'",
             f"  {'metric':<28}{'raw':>11}{'calibrated':>12}" + (f"{'previous':>11}" if previous is not None else "")]
    for name, raw in raw_metrics.items():
        row = f"  {name:<28}{raw:>11.4f}" + (f"{calibrated[name]:>12.4f}" if calibrated is not None else f"{'-':>12}")
        if previous is not None and name in previous:
            row += f"{previous[name]:>11.4f}"
        lines.append(row)
    if calibrated is None:
        lines.append("  calibrated: absent (the predictions have no calibrated_prob_class_<i> columns; "
                     "'tce calibrate apply' adds them)")
    return lines + _decision_lines(task)


def _interval(value: dict[str, float | None] | None) -> str:
    if value is None or value["value"] is None:
        return "-"
    if value["low"] is None:
        return f"{value['value']:.3f}"
    return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def _decision_lines(task: EvaluatedTask) -> list[str]:
    """The decisions beside the fixed thresholds: per action its share, precision and recall."""
    decisions = task.decisions
    if decisions is None:
        return []
    measured = ("of class 1 at or above each action" if task.spec.kind == "binary"
                else "of each class among the records decided as it")
    lines = [f"  decisions ({decisions['source']}; precision and recall {measured}, "
             f"[{decisions['bootstrap']['level']:.0%} bootstrap interval]):",
             f"    {'action':<18}{'from':>10}{'records':>9}  {'volume':<22}{'precision':<22}recall"]
    for action in decisions["actions"]:
        start = "-" if action["threshold"] is None else f"{action['threshold']:.4g}"
        lines.append(f"    {action['action']:<18}{start:>10}{action['records']:>9}  "
                     f"{_interval(action['volume']):<22}{_interval(action['precision']):<22}"
                     f"{_interval(action['recall'])}")
    return lines


def _test_lines(comparison: dict[str, Any]) -> list[str]:
    """The statistical tests (STATISTICAL_TESTS), on the raw scores."""
    lines = []
    if "paired_t_test" in comparison:
        t, w = comparison["paired_t_test"], comparison["wilcoxon"]
        lines.append(f"  paired t-test (raw - previous): mean {t['mean_difference']:+.4f}, t = {t['statistic']:.3f}, "
                     f"p = {t['p_value']:.3g}; Wilcoxon signed-rank: W = {w['statistic']:.1f}, p = {w['p_value']:.3g}")
        lines += [f"  McNemar at {t} (raw): new right/previous wrong {m['new_right_previous_wrong']}, the reverse "
                  f"{m['new_wrong_previous_right']}, chi2 = {m['statistic']:.3f}, p = {m['p_value']:.3g} "
                  f"(exact {m['exact_p_value']:.3g})" for t, m in comparison["mcnemar"].items()]
    if "delong" in comparison:
        d, b = comparison["delong"], comparison["bootstrap"]
        lines.append(f"  DeLong (raw scores): AUROC {d['auroc_new']:.4f} vs {d['auroc_previous']:.4f}, "
                     f"z = {d['z']:.3f}, p = {d['p_value']:.3g}")
        lines.append(f"  bootstrap ({b['samples']} samples), 95% interval of the AUROC difference "
                     f"[{b['auroc_delta_ci'][0]:+.4f}, {b['auroc_delta_ci'][1]:+.4f}], of the AP difference "
                     f"[{b['average_precision_delta_ci'][0]:+.4f}, {b['average_precision_delta_ci'][1]:+.4f}]")
    return lines


def _comparison_lines(comparison: dict[str, Any]) -> list[str]:
    lines = ["", f"comparison with '{comparison['previous_score_field']}' on task {comparison['task']} "
             "(new - previous):"]
    for kind in ("raw", "calibrated"):
        if comparison[f"delta_{kind}"] is not None:
            deltas = ", ".join(f"{k} {v:+.4f}" for k, v in comparison[f"delta_{kind}"].items())
            lines.append(f"  {kind:<11}{deltas}")
    correlation = f"  correlation: Pearson {comparison['pearson']:.4f}, Spearman {comparison['spearman']:.4f}"
    if "agreement_scores" in comparison:  # COMPARISON_METRICS all
        correlation += f"; agreement ({comparison['agreement_scores']}) " + ", ".join(
            f"{t}: {comparison[f'agreement_at_{t}']:.3f}" for t in evaluation.THRESHOLDS)
    return [*lines, correlation, *_test_lines(comparison)]


def summary_text(records: int, tasks: list[EvaluatedTask], comparison: dict[str, Any] | None,
                 versions: list[str]) -> str:
    lines = [f"MODEL EVALUATION: {records} records, calibration version {', '.join(versions) or 'unknown'}",
             "=" * 72]
    for task in tasks:
        lines += _task_lines(task, comparison)
    if comparison is not None:
        lines += _comparison_lines(comparison)
    return "\n".join(lines) + "\n"


def _staged_frame(frame: pd.DataFrame, path: Path) -> None:
    staging = path.with_name(f".{path.stem}.staging{path.suffix}")
    write_frame(frame, staging)
    os.replace(staging, path)


def _seed_task_metrics(task: EvaluatedTask, comparison: dict[str, Any] | None) -> dict[str, Any]:
    raw = task.metrics["raw"]
    assert raw is not None
    metrics: dict[str, Any] = seed.seed_metrics(raw, task.spec.num_classes)
    if comparison is not None and comparison["task"] == task.spec.name:
        metrics.update(seed.flat_comparison(comparison))
    return metrics


def write_seed_layout(out: Path, frame: pd.DataFrame, tasks: list[EvaluatedTask], comparison: dict[str, Any] | None,
                      id_field: str | None, suffix: str) -> None:
    """Seed 002's own files (``tce.lib.seed_evaluation``) under ``OUT/eval`` and
    ``OUT/metrics``, from the raw scores, each folder's markers last."""
    single = len(tasks) == 1
    eval_dir, metrics_dir = out / seed.EVAL_DIR, out / seed.METRICS_DIR
    columns: dict[str, Any] = {id_field: frame[id_field].to_numpy()} if id_field is not None else {}
    columns.update({task.label_column: task.scores.labels for task in tasks})  # ID, labels, probabilities
    metrics: dict[str, Any] = {}
    for task in tasks:
        prefix, scores = seed.task_prefix(task.spec.name, single), task.scores
        names = probability_columns(task.spec.name, task.spec.num_classes, single)
        columns.update(zip(names, scores.series["raw"].T, strict=True))
        metrics.update({prefix + k: v for k, v in _seed_task_metrics(task, comparison).items()})
        shown = {k: v for k, v in scores.series.items() if k in ("raw", "previous")}  # the model's own, as the seed
        curves = plots.TaskScores(scores.task, scores.classes, scores.labels, shown)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        plots.roc_curves(curves, metrics_dir / f"{prefix}roc_curve.jpg")
        plots.pr_curves(curves, metrics_dir / f"{prefix}pr_curve.jpg")
    eval_dir.mkdir(parents=True, exist_ok=True)
    _staged_frame(pd.DataFrame(columns), eval_dir / f"{seed.PREDICTIONS_STEM}{suffix}")
    write_markers(eval_dir)
    seed.write_metrics_report(metrics, metrics_dir, [seed.task_prefix(t.spec.name, single) for t in tasks])
    write_markers(metrics_dir)


@dataclass(frozen=True)
class _Scored:
    path: Path
    frame: pd.DataFrame
    tasks: tuple[TaskSpec, ...]   # the tasks evaluated
    labels: dict[str, str]
    single: bool                  # the file names one task's columns unprefixed


def _scored_input(job: EvaluateJob, note: Callable[[str], None]) -> _Scored:
    model_tasks = _served_tasks(job)
    tasks = _selected(model_tasks, job.task)
    labels = _label_columns(tasks, job.labels, len(model_tasks) == 1)
    path = _score(job, tasks, labels, note)
    return _Scored(path, read_frame(path), tasks, labels, len(model_tasks) == 1)


def _scored_file(job: EvaluateJob) -> _Scored:
    assert job.predictions is not None
    frame = read_frame(job.predictions)
    if job.bundle is not None:
        model_tasks = Manifest.load(job.bundle).tasks
        single = len(model_tasks) == 1
    else:
        model_tasks, single = _file_tasks(frame), "prob_class_0" in frame.columns
    tasks = _selected(model_tasks, job.task)
    labels = _label_columns(tasks, job.labels, len(model_tasks) == 1)
    if job.bundle is None:
        _need_indices(frame, labels)
    if job.id_field is not None and job.id_field not in frame:
        raise UsageError(f"the ID column {job.id_field!r} (--id-field or ID_FIELD) is not a column of "
                         f"{job.predictions}")
    return _Scored(job.predictions, frame, tasks, labels, single)


def release_score_column(release: int) -> str:
    """The column holding release ``release``'s class-1 score of the compared task."""
    return f"release_{release}_score"


def _with_release_scores(job: EvaluateJob, scored: _Scored, note: Callable[[str], None]) -> _Scored:
    """``scored`` with release N's class-1 score of the compared task beside it (``compare_release``)."""
    assert job.input is not None and job.compare_release is not None
    number, column = job.compare_release, release_score_column(job.compare_release)
    model = release_model_name(job.model, number)
    release_tasks = {t.name: t for t in _served_tasks(replace(job, model=model))}
    binary = [t for t in scored.tasks if t.num_classes == 2 and t.name in release_tasks]
    named = job.compare_task or (binary[0].name if len(binary) == 1 else None)
    if named is None or named not in {t.name for t in binary}:
        raise UsageError(f"release {number} is compared on one binary task both releases have: give --compare-task "
                         f"(one of {[t.name for t in binary]})")
    work = job.output / f"{SCORING_DIR}-release-{number}"
    scoring = PredictJob(job.input, work, url=job.url, protocol=job.protocol, model=model, format=job.format,
                         id_field=job.id_field, allow_missing_columns=job.allow_missing_columns,
                         chunk_rows=job.chunk_rows, max_in_flight=job.max_in_flight, restart=job.restart,
                         output_stem=f"release_{number}", batch_size=job.batch_size, max_rejects=job.max_rejects)
    note(f"scoring the same records with release {number} ('{model}')")
    frame = read_frame(run_predict(scoring, note=note).path)  # type: ignore[arg-type]
    if len(frame) != len(scored.frame) or (job.id_field is not None and not np.array_equal(
            frame[job.id_field].to_numpy(), scored.frame[job.id_field].to_numpy())):
        raise UsageError(f"release {number} scored other records than the current release ({len(frame)} vs "
                         f"{len(scored.frame)} rows): both must score the same records to be compared")
    task = release_tasks[named]
    calibrated, raw = (probability_columns(named, task.num_classes, len(release_tasks) == 1, calibrated=c)[1]
                       for c in (True, False))
    combined = scored.frame.assign(**{column: frame[calibrated if calibrated in frame else raw].to_numpy(np.float64),
                                      f"release_{number}_raw_score": frame[raw].to_numpy(np.float64)})
    _staged_frame(combined, scored.path)
    shutil.rmtree(work, ignore_errors=True)
    return _Scored(scored.path, combined, scored.tasks, scored.labels, scored.single)


def _clear_markers(out: Path) -> None:
    for folder in (out, out / seed.EVAL_DIR, out / seed.METRICS_DIR):
        for marker in (SUCCESS, HEALTH):
            (folder / marker).unlink(missing_ok=True)


def run_evaluate(job: EvaluateJob, note: Callable[[str], None] | None = None) -> EvaluationReport:
    note = note or log.info
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    _clear_markers(out)
    scored = _scored_input(job, note) if job.input is not None else _scored_file(job)
    if job.compare_release is not None:
        scored = _with_release_scores(job, scored, note)
    frame = scored.frame
    evaluated, comparison = evaluate_frame(job, frame, scored.tasks, scored.labels, scored.single)
    versions = sorted(set(frame[VERSION_COLUMN].astype(str))) if VERSION_COLUMN in frame else []
    _draw(evaluated, comparison, out, job.bins)
    report = {"records": len(frame), "calibration_version": versions, "source": str(job.input or job.predictions),
              "tasks": {t.spec.name: {"kind": t.spec.kind, "classes": list(t.spec.classes),
                                      "label_column": t.label_column, **t.metrics, "decisions": t.decisions}
                        for t in evaluated},
              "comparison": comparison}
    (out / "metrics.json").write_text(json.dumps(_finite(report), indent=1), encoding="utf-8")
    summary = summary_text(len(frame), evaluated, comparison, versions)
    (out / "metrics_summary.txt").write_text(summary, encoding="utf-8")
    write_seed_layout(out, frame, evaluated, comparison, job.id_field, scored.path.suffix)
    target = out / f"{OUTPUT_STEM}{scored.path.suffix}"
    if job.input is not None:
        scored.path.replace(target)
        shutil.rmtree(out / SCORING_DIR, ignore_errors=True)
    elif scored.path.resolve() != target.resolve():
        file_format(scored.path)
        shutil.copyfile(scored.path, target)
    write_markers(out)
    return EvaluationReport(len(frame), evaluated, comparison, versions, summary, out)
