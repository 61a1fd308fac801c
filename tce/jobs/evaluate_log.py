"""Late labels against the prediction log: ``tce evaluate --predictions LOG --labels LABELS.csv
--join-on ID [--window day|week]``.

The gateway's prediction log (``tce_gateway.prediction_log``) holds what was answered:
per record an ``id``, a UTC ``timestamp`` and each task's raw and calibrated scores by class.
Labels arrive later in a CSV: the ``--join-on`` column holds the log's ``id``; each task's
true label is in ``label`` (one task) or ``label_<task>`` (several), or the column
``--label TASK=COLUMN`` names, as class names or indices. An empty label cell is a label
not known yet: that row is left out of that task and counted.

Joined records are grouped by the day or ISO week (UTC) they were answered in; per window
and task: the records, ECE (calibrated and raw), MCE, Brier, log-loss, and AUROC where the
window holds every class. Written to ``--out``: ``log_metrics.json``, ``log_metrics.csv``,
``calibration_over_time_<task>.png`` (ECE per window) and ``reliability/<task>/<window>.png``.

Mistakes are errors, not quiet defaults: no log file, a line that is not a log entry, an id
column or a label column the labels file lacks, ids repeated in the labels, labels of which
no id is in the log. Labels of requests the log did not sample, and logged requests whose
labels have not come, are counted in the report.
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tce.lib import plots
from tce.lib.calibration_metrics import TaskMetrics, task_metrics
from tce.lib.labels import true_labels
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec
from tce_client.columns import true_label_column
from tce_gateway.prediction_log import SUFFIX, read_lines

WINDOWS = ("day", "week")
KINDS = ("calibrated", "raw")
_NEEDED = ("id", "timestamp", "tasks")


@dataclass(frozen=True)
class LogEvaluationJob:
    predictions: str                  # a log file, a directory of them, or a glob
    labels: Path
    out: Path
    join_on: str = "id"
    window: str = "day"
    label_columns: Mapping[str, str] = field(default_factory=dict)  # task -> label column
    task: str | None = None           # this task only
    bins: int = 15

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise UsageError(f"--window must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if self.bins < 2:
            raise UsageError(f"--bins must be >= 2, got {self.bins}")


@dataclass(frozen=True)
class JoinCounts:
    log_files: int
    log_entries: int                  # records in the log (a repeated id counted once)
    repeated_log_ids: int             # entries whose id came again later (a retry): the latest kept
    incomplete_lines: int             # a line still being written when the log was read
    label_rows: int
    matched: int                      # label rows whose id is in the log
    labels_without_prediction: int    # not sampled by the log (or older than its rotated files)
    predictions_without_label: int    # labels not come yet

    def line(self) -> str:
        return (f"{self.matched} of {self.label_rows} labelled ids found in {self.log_entries} logged records "
                f"({self.log_files} files); {self.labels_without_prediction} labels have no logged prediction "
                f"(not sampled, or rotated away), {self.predictions_without_label} logged records have no label yet"
                + (f"; {self.repeated_log_ids} repeated ids (the latest answer kept)" if self.repeated_log_ids else "")
                + (f"; {self.incomplete_lines} line(s) still being written skipped" if self.incomplete_lines else ""))


@dataclass(frozen=True)
class WindowMetrics:
    window: str                       # 2026-11-30, or 2026-W48
    start: str                        # first day of the window (ISO date)
    task: str
    records: int
    metrics: dict[str, TaskMetrics]   # "calibrated" / "raw" -> metrics (a kind the log lacks is absent)
    unlabelled: int = 0               # joined records whose label of this task is empty


@dataclass(frozen=True)
class LogEvaluationReport:
    out: Path
    join: JoinCounts
    windows: list[WindowMetrics]
    notes: list[str]
    summary: str


def log_files(spec: str | Path) -> list[Path]:
    """The files a ``--predictions`` value names: a file, a directory (its ``*.jsonl``), or a glob."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
        if not found:
            raise UsageError(f"no prediction log files (*{SUFFIX}) in {path}")
        return found
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not found:
            raise UsageError(f"no file matches {text}")
        return found
    raise UsageError(f"no prediction log at {text} (give a file, a directory or a glob)")


@dataclass
class _Log:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> the latest entry
    repeated: int = 0
    incomplete: int = 0


def read_log(files: list[Path]) -> _Log:
    """Every complete entry of the files; a line that is not an entry is an error naming it."""
    log = _Log()
    for path in files:
        with open(path, "rb") as handle:
            data = handle.read()
        if data and not data.endswith(b"\n"):
            log.incomplete += 1
        for number, line in enumerate(read_lines(path), start=1):
            entry = _entry(line, path, number)
            earlier = log.entries.get(entry["id"])
            if earlier is not None:
                log.repeated += 1
                if earlier["timestamp"] > entry["timestamp"]:
                    continue
            log.entries[entry["id"]] = entry
    if not log.entries:
        raise UsageError(f"the prediction log ({', '.join(str(f) for f in files[:3])}) holds no entries")
    return log


def _entry(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or any(k not in entry for k in _NEEDED) or not isinstance(entry["tasks"], dict):
        raise UsageError(f"{path} line {number} is not a prediction log entry (a JSON object with "
                         f"{', '.join(_NEEDED)}): {line[:80]!r}")
    entry["id"] = str(entry["id"])
    return entry


def _tasks(entries: list[dict[str, Any]]) -> list[TaskSpec]:
    """The tasks the log holds, with their classes in the order the scores list them."""
    classes: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        for name, task in entry["tasks"].items():
            scores = task.get("calibrated") or task.get("raw")
            if not isinstance(scores, dict):
                continue
            found = tuple(scores)
            known = classes.setdefault(name, found)
            if known != found:
                raise UsageError(f"task {name!r} has classes {list(known)} in some log entries and {list(found)} "
                                 "in others: evaluate one release at a time")
    if not classes:
        raise UsageError("the prediction log holds no scores (were the score outputs requested?)")
    return [TaskSpec(name, "binary" if len(c) == 2 else "multiclass", c) for name, c in classes.items()]


def read_labels(path: Path, join_on: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype={join_on: str}, keep_default_na=True)
    except FileNotFoundError:
        raise UsageError(f"no labels file {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not a readable CSV file: {error}") from None
    if join_on not in frame:
        raise UsageError(f"the labels file {path} has no id column {join_on!r} (--join-on); its columns: "
                         f"{', '.join(map(str, frame.columns))}")
    ids = frame[join_on]
    if ids.isna().any():
        raise UsageError(f"the id column {join_on!r} of {path} is empty in {int(ids.isna().sum())} rows")
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise UsageError(f"{len(repeated)} ids appear more than once in {path} (e.g. {repeated.iloc[0]!r}): one "
                         "label row per logged id")
    return frame


def window_of(stamp: str, window: str) -> tuple[str, str]:
    """(window name, its first day) of a log timestamp (UTC)."""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise UsageError(f"a log entry's timestamp {stamp!r} is not ISO 8601") from None
    day = (moment.astimezone(timezone.utc) if moment.tzinfo else moment).date()  # no zone: UTC, as logged
    if window == "day":
        return day.isoformat(), day.isoformat()
    year, week, weekday = day.isocalendar()
    return f"{year}-W{week:02d}", (day - timedelta(days=weekday - 1)).isoformat()


def _scores(entries: list[dict[str, Any]], task: TaskSpec, kind: str) -> np.ndarray | None:
    """[records, classes] of one kind of score, or None when any record lacks it."""
    rows = []
    for entry in entries:
        scores = entry["tasks"].get(task.name, {}).get(kind)
        if not isinstance(scores, dict):
            return None
        rows.append([math.nan if scores.get(c) is None else float(scores[c]) for c in task.classes])
    return np.array(rows, dtype=np.float64).reshape(len(entries), task.num_classes)


def _task_windows(job: LogEvaluationJob, task: TaskSpec, joined: pd.DataFrame, column: str,
                  entries: dict[str, dict[str, Any]]) -> tuple[list[WindowMetrics], Any]:
    """Metrics of one task per window, and the scores drawn per window."""
    if column not in joined:
        raise UsageError(f"the labels file {job.labels} has no label column {column!r} for task {task.name!r} "
                         f"(name it with --label {task.name}=COLUMN, or evaluate other tasks with --task)")
    labelled = joined[joined[column].notna() & (joined[column].astype(str).str.strip() != "")]
    results, drawn = [], []
    for window, rows in labelled.groupby("_window", sort=True):
        ids = rows[job.join_on].tolist()
        window_entries = [entries[i] for i in ids]
        truth = true_labels(rows.reset_index(drop=True), task, column)
        series = {kind: s for kind in KINDS if (s := _scores(window_entries, task, kind)) is not None
                  and np.isfinite(s).all()}
        metrics = {kind: task_metrics(s, truth, job.bins) for kind, s in series.items()}
        unlabelled = int((joined["_window"] == window).sum()) - len(rows)
        results.append(WindowMetrics(str(window), str(rows["_start"].iloc[0]), task.name, len(rows), metrics,
                                     unlabelled))
        drawn.append((str(window), plots.TaskScores(task.name, task.classes, truth, series)))
    return results, drawn


def run_log_evaluation(job: LogEvaluationJob) -> LogEvaluationReport:
    files = log_files(job.predictions)
    log = read_log(files)
    labels = read_labels(job.labels, job.join_on)
    entries = log.entries
    in_log = labels[job.join_on].isin(entries.keys())
    joined = labels[in_log].copy()
    if joined.empty:
        sample = ", ".join(repr(i) for i in list(entries)[:2])
        raise UsageError(f"no id of {job.labels} (column {job.join_on!r}) is in the prediction log ({len(entries)} "
                         f"records, ids like {sample}): check --join-on and that the log covers the labelled requests")
    logged = _tasks([entries[i] for i in joined[job.join_on]])
    tasks = [t for t in logged if job.task is None or t.name == job.task]
    if not tasks:
        raise UsageError(f"--task {job.task!r} is not in the prediction log (its tasks: "
                         f"{', '.join(t.name for t in logged)})")
    places = [window_of(entries[i]["timestamp"], job.window) for i in joined[job.join_on]]
    joined["_window"], joined["_start"] = [p[0] for p in places], [p[1] for p in places]
    counts = JoinCounts(len(files), len(entries), log.repeated, log.incomplete, len(labels), len(joined),
                        int((~in_log).sum()), len(entries) - len(joined))
    windows, drawings, notes = [], {}, []
    for task in tasks:
        column = job.label_columns.get(task.name, true_label_column(task.name, len(logged) == 1))
        found, drawings[task.name] = _task_windows(job, task, joined, column, entries)
        windows += found
        unlabelled = len(joined) - sum(w.records for w in found)
        if unlabelled:
            notes.append(f"note: {unlabelled} joined records have no {task.name!r} label yet (empty {column!r}): "
                         "left out of that task")
    _write(job, counts, windows, drawings, tasks)
    return LogEvaluationReport(job.out, counts, windows, notes, format_windows(windows, counts))


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _rows(windows: list[WindowMetrics]) -> list[dict[str, Any]]:
    rows = []
    for w in windows:
        row: dict[str, Any] = {"window": w.window, "start": w.start, "task": w.task, "records": w.records}
        for metric in ("ece", "brier", "auroc", "mce", "log_loss"):
            for kind in KINDS:
                found = w.metrics.get(kind)
                row[f"{metric}_{kind}"] = _number(getattr(found, metric)) if found is not None else None
        rows.append(row)
    return rows


def _write(job: LogEvaluationJob, counts: JoinCounts, windows: list[WindowMetrics],
           drawings: dict[str, list[tuple[str, plots.TaskScores]]], tasks: list[TaskSpec]) -> None:
    out = job.out
    out.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        folder = out / "reliability" / task.name
        folder.mkdir(parents=True, exist_ok=True)
        for window, scores in drawings[task.name]:
            if scores.series:
                plots.reliability_diagram(scores, folder / f"{window}.png", job.bins)
        mine = [w for w in windows if w.task == task.name]
        plots.calibration_over_time(task.name, [w.window for w in mine], [w.records for w in mine],
                                    {kind: [w.metrics[kind].ece if kind in w.metrics else math.nan for w in mine]
                                     for kind in KINDS}, out / f"calibration_over_time_{task.name}.png")
    rows = _rows(windows)
    _replace(out / "log_metrics.csv", pd.DataFrame(rows).to_csv(index=False))
    document = {"window": job.window, "join_on": job.join_on, "join": asdict(counts), "windows": rows}
    _replace(out / "log_metrics.json", json.dumps(document, indent=1))


def _replace(path: Path, text: str) -> None:
    """Written aside and renamed into place: a reader sees the old file or the new one."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def format_windows(windows: list[WindowMetrics], counts: JoinCounts) -> str:
    """One line per window and task: records, ECE calibrated and raw, Brier and AUROC (calibrated)."""
    def value(w: WindowMetrics, kind: str, metric: str) -> str:
        found = w.metrics.get(kind)
        number = getattr(found, metric) if found is not None else math.nan
        return f"{number:8.4f}" if math.isfinite(number) else f"{'-':>8}"

    width = max([6, *(len(w.task) for w in windows)])
    lines = [f"{'window':<10} {'task':<{width}} {'records':>7} {'ECE cal':>8} {'ECE raw':>8} {'Brier':>8} "
             f"{'AUROC':>8}"]
    for w in windows:
        lines.append(f"{w.window:<10} {w.task:<{width}} {w.records:>7} {value(w, 'calibrated', 'ece')} "
                     f"{value(w, 'raw', 'ece')} {value(w, 'calibrated', 'brier')} {value(w, 'calibrated', 'auroc')}")
    return "\n".join([*lines, counts.line()]) + "\n"

