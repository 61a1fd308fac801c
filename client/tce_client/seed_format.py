"""Seed 000's response formats, produced from typed predictions.

Binary task: ``legacy-score`` (raw class-1), ``calibrated-score``, ``output-label``.
Multiclass: ``prob_NN`` / ``calibrated_prob_NN`` (1-based, two digits) and
``output-label``. ``output-label`` is ``class-<argmax of raw>`` as in the seed.
Values are strings, as the seed's ``str(...)`` of Python floats.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Mapping, Sequence

from tce_backends.errors import UsageError

from .results import Prediction, TaskResult


def seed_record(result: TaskResult) -> dict[str, str]:
    return seed_fields(result.raw, result.calibrated)


def seed_fields(raw_scores: Sequence[float], calibrated_scores: Sequence[float]) -> dict[str, str]:
    """One record's fields from its per-class raw and calibrated probabilities."""
    raw = [float(v) for v in raw_scores]
    calibrated = [float(v) for v in calibrated_scores]
    label = f"class-{raw.index(max(raw))}"
    if len(raw) == 2:
        return {"legacy-score": str(raw[1]), "calibrated-score": str(calibrated[1]), "output-label": label}
    record = {}
    for i in range(len(raw)):
        record[f"prob_{str(i + 1).zfill(2)}"] = str(raw[i])
        record[f"calibrated_prob_{str(i + 1).zfill(2)}"] = str(calibrated[i])
    record["output-label"] = label
    return record


def _task(predictions: Sequence[Prediction], task: str | None) -> str:
    if not predictions:
        raise UsageError("no predictions to format")
    names = list(predictions[0].tasks)
    if task is None:
        if len(names) != 1:
            raise UsageError(f"the model has tasks {names}: name the one to format")
        return names[0]
    if task not in names:
        raise UsageError(f"unknown task {task!r}; the model has {names}")
    return task


def to_seed_json(predictions: Sequence[Prediction], task: str | None = None) -> str:
    name = _task(predictions, task)
    return json.dumps({"predictions": [seed_record(p[name]) for p in predictions]})


def to_seed_csv(predictions: Sequence[Prediction], task: str | None = None) -> str:
    """One header line with the JSON field names, then one line per record."""
    name = _task(predictions, task)
    return seed_csv([seed_record(p[name]) for p in predictions])


def seed_rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Every task's seed record: a task's fields alone for a one-task model, else
    ``{task: fields}`` per record."""
    if not predictions:
        return []
    tasks = list(predictions[0].tasks)
    if len(tasks) == 1:
        return [seed_record(p[tasks[0]]) for p in predictions]
    return [{task: seed_record(p[task]) for task in tasks} for p in predictions]


def seed_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Records as CSV with a header of their field names; several tasks' fields are
    named ``<task>.<field>``."""
    flat = [{f"{task}.{name}": value for task, fields in row.items() for name, value in fields.items()}
            if any(isinstance(value, Mapping) for value in row.values()) else row for row in rows]
    buffer = io.StringIO()
    if flat:
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    return buffer.getvalue()
