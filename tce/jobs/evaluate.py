"""``tce evaluate``: seed 002's evaluation job.

Labelled records are scored through the served ensemble (``tce predict``'s batch job,
resumable, into ``OUT/.scoring``), or an already scored predictions file is read.
For every task the raw and the calibrated scores are evaluated side by side
(``tce.lib.evaluation_metrics``), plots drawn (``tce.lib.plots``), and, given a previous
model's score column, the two models compared. ``OUT`` receives
``eval_predictions.<fmt>``, ``metrics.json``, ``metrics_summary.txt``, the PNGs, and
``_SUCCESS`` and ``_HEALTH`` last.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from tce.jobs.predict import PredictJob, run_predict
from tce.lib import evaluation_metrics as evaluation
from tce.lib import plots
from tce.lib.labels import true_labels
from tce.lib.parts import HEALTH, SUCCESS, write_markers
from tce.lib.tables import TableSource, file_format, read_frame
from tce_backends.bundle import Manifest
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec
from tce_client import DEFAULT_MODEL, CalibratedClassifierClient
from tce_client.columns import (
    VERSION_COLUMN,
    probability_columns,
    tasks_in_columns,
    true_label_column,
)

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

    def __post_init__(self) -> None:
        if (self.input is None) == (self.predictions is None):
            raise UsageError("give --input (labelled records to score) or --predictions (a scored file), not both")
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
    metrics: dict[str, dict[str, float]]   # "raw" / "calibrated" -> metrics


@dataclass(frozen=True)
class EvaluationReport:
    records: int
    tasks: list[EvaluatedTask]
    comparison: dict[str, Any] | None
    calibration_versions: list[str]
    summary: str
    out: Path


def _label_columns(tasks: tuple[TaskSpec, ...], overrides: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(overrides) - {t.name for t in tasks})
    if unknown:
        raise UsageError(f"--label names unknown tasks {unknown}; the tasks are {[t.name for t in tasks]}")
    return {t.name: overrides.get(t.name, true_label_column(t.name, len(tasks) == 1)) for t in tasks}


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
    keep = tuple(dict.fromkeys([*labels.values(), *([job.previous_score_field] if job.previous_score_field
                                                    else [])]))
    scoring = PredictJob(job.input, job.output / SCORING_DIR, url=job.url, protocol=job.protocol, model=job.model,
                         format=job.format, id_field=job.id_field, keep=keep,
                         allow_missing_columns=job.allow_missing_columns, chunk_rows=job.chunk_rows,
                         max_in_flight=job.max_in_flight, restart=job.restart, output_stem=OUTPUT_STEM)
    path = run_predict(scoring, note=note).path
    assert path is not None  # evaluate scores in one run, never as a shard
    return path


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
        raise UsageError(f"--previous-score-field {column!r} is not a column of the predictions")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = int((values.isna() | (values < 0) | (values > 1)).sum())
    if bad:
        raise UsageError(f"--previous-score-field {column!r} needs a probability in [0, 1] in every row; "
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
                         "a previous model's score needs a binary task; this model has none")
    return binary[0]


def evaluate_frame(job: EvaluateJob, frame: pd.DataFrame, tasks: tuple[TaskSpec, ...],
                   labels: Mapping[str, str]) -> tuple[list[EvaluatedTask], dict[str, Any] | None]:
    """Metrics per task (raw and calibrated) and the comparison, from a scored frame."""
    single = len(tasks) == 1
    evaluated = []
    for task in tasks:
        series = {}
        for kind in ("raw", "calibrated"):
            names = probability_columns(task.name, task.num_classes, single, calibrated=kind == "calibrated")
            missing = [n for n in names if n not in frame]
            if missing:
                hint = " (add them with 'tce calibrate apply')" if kind == "calibrated" else ""
                raise UsageError(f"task {task.name!r}: the predictions lack the {kind} columns {missing}{hint}")
            series[kind] = frame[names].to_numpy(dtype=np.float64)
        truth = true_labels(frame, task, labels[task.name])
        scores = plots.TaskScores(task.name, task.classes, truth, series)
        metrics = {kind: evaluation.task_metrics(truth, probabilities, job.bins)
                   for kind, probabilities in series.items()}
        evaluated.append(EvaluatedTask(task, labels[task.name], scores, metrics))
    if job.previous_score_field is None:
        return evaluated, None
    target = _compared_task(job, evaluated)
    previous = _previous_scores(frame, job.previous_score_field)
    scores = target.scores
    comparison = {"task": target.spec.name, "previous_score_field": job.previous_score_field,
                  **evaluation.compare(scores.labels, scores.series["raw"][:, 1], scores.series["calibrated"][:, 1],
                                       previous, job.bins, job.bootstrap_samples, current=target.metrics)}
    scores.series["previous"] = np.stack([1 - previous, previous], axis=1)
    return evaluated, comparison


def _draw(tasks: list[EvaluatedTask], comparison: dict[str, Any] | None, out: Path, bins: int) -> None:
    for task in tasks:
        name = task.spec.name
        plots.roc_curves(task.scores, out / f"roc_{name}.png")
        plots.pr_curves(task.scores, out / f"pr_{name}.png")
        plots.score_distributions(task.scores, out / f"score_distribution_{name}.png")
        plots.reliability_diagram(task.scores, out / f"reliability_{name}.png", bins)
        if comparison is not None and comparison["task"] == name:
            series = task.scores.series
            plots.comparison_scatter(name, task.scores.labels, series["calibrated"][:, 1], series["previous"][:, 1],
                                     out / f"comparison_scatter_{name}.png")


def _finite(value: Any) -> Any:
    """NaN (an undefined metric) as JSON null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def summary_text(records: int, tasks: list[EvaluatedTask], comparison: dict[str, Any] | None,
                 versions: list[str]) -> str:
    lines = [f"MODEL EVALUATION: {records} records, calibration version {', '.join(versions) or 'unknown'}",
             "=" * 72]
    for task in tasks:
        spec = task.spec
        compared = comparison is not None and comparison["task"] == spec.name
        lines += ["", f"task {spec.name} ({spec.kind}: {', '.join(spec.classes)}), labels from "
                  f"'{task.label_column}'",
                  f"  {'metric':<28}{'raw':>11}{'calibrated':>12}" + (f"{'previous':>11}" if compared else "")]
        for name, raw in task.metrics["raw"].items():
            row = f"  {name:<28}{raw:>11.4f}{task.metrics['calibrated'][name]:>12.4f}"
            if compared:
                row += f"{comparison['previous'][name]:>11.4f}" if name in comparison["previous"] else ""
            lines.append(row)
    if comparison is not None:
        lines += ["", f"comparison with '{comparison['previous_score_field']}' on task {comparison['task']} "
                  "(new - previous):"]
        for kind in ("raw", "calibrated"):
            deltas = ", ".join(f"{k} {v:+.4f}" for k, v in comparison[f"delta_{kind}"].items())
            lines.append(f"  {kind:<11}{deltas}")
        lines.append(f"  correlation: Pearson {comparison['pearson']:.4f}, Spearman {comparison['spearman']:.4f}; "
                     "agreement " + ", ".join(f"{t}: {comparison[f'agreement_at_{t}']:.3f}"
                                              for t in evaluation.THRESHOLDS))
        if "delong" in comparison:
            d, b = comparison["delong"], comparison["bootstrap"]
            lines.append(f"  DeLong (raw scores): AUROC {d['auroc_new']:.4f} vs {d['auroc_previous']:.4f}, "
                         f"z = {d['z']:.3f}, p = {d['p_value']:.3g}")
            lines.append(f"  bootstrap ({b['samples']} samples), 95% interval of the AUROC difference "
                         f"[{b['auroc_delta_ci'][0]:+.4f}, {b['auroc_delta_ci'][1]:+.4f}], of the AP difference "
                         f"[{b['average_precision_delta_ci'][0]:+.4f}, {b['average_precision_delta_ci'][1]:+.4f}]")
    return "\n".join(lines) + "\n"


def run_evaluate(job: EvaluateJob, note: Callable[[str], None] = print) -> EvaluationReport:
    out = job.output
    out.mkdir(parents=True, exist_ok=True)
    for marker in (SUCCESS, HEALTH):
        (out / marker).unlink(missing_ok=True)
    if job.input is not None:
        tasks = _served_tasks(job)
        labels = _label_columns(tasks, job.labels)
        scored = _score(job, tasks, labels, note)
        frame = read_frame(scored)
    else:
        assert job.predictions is not None
        scored = job.predictions
        frame = read_frame(scored)
        tasks = Manifest.load(job.bundle).tasks if job.bundle is not None else _file_tasks(frame)
        labels = _label_columns(tasks, job.labels)
        if job.bundle is None:
            _need_indices(frame, labels)
    evaluated, comparison = evaluate_frame(job, frame, tasks, labels)
    versions = sorted(set(frame[VERSION_COLUMN].astype(str))) if VERSION_COLUMN in frame else []
    _draw(evaluated, comparison, out, job.bins)
    report = {"records": len(frame), "calibration_version": versions, "source": str(job.input or job.predictions),
              "tasks": {t.spec.name: {"kind": t.spec.kind, "classes": list(t.spec.classes),
                                      "label_column": t.label_column, **t.metrics} for t in evaluated},
              "comparison": comparison}
    (out / "metrics.json").write_text(json.dumps(_finite(report), indent=1), encoding="utf-8")
    summary = summary_text(len(frame), evaluated, comparison, versions)
    (out / "metrics_summary.txt").write_text(summary, encoding="utf-8")
    target = out / f"{OUTPUT_STEM}{scored.suffix}"
    if job.input is not None:
        scored.replace(target)
        shutil.rmtree(out / SCORING_DIR, ignore_errors=True)
    elif scored.resolve() != target.resolve():
        file_format(scored)
        shutil.copyfile(scored, target)
    write_markers(out)
    return EvaluationReport(len(frame), evaluated, comparison, versions, summary, out)

