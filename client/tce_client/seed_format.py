"""Seed 000's response formats, produced from typed predictions.

Binary task: ``legacy-score`` (raw class-1), ``calibrated-score``, ``output-label``.
Multiclass: ``prob_NN`` / ``calibrated_prob_NN`` (1-based, two digits) and
``output-label``. ``output-label`` is ``class-<argmax of raw>`` as in the seed.
Values are strings, as the seed's ``str(...)`` of Python floats.

A task whose calibration fell back to raw for any record of a response (unreadable
tables, a failed lookup: the served calibrator's flag) also gets
``calibration-fallback`` (``"True"``/``"False"``) in every record; otherwise the
records are exactly the seed's.

Responses by media type (SageMaker's ``Accept``): ``application/json``
(``{"predictions": [...]}``), ``text/csv`` (a header of the field names, then a line per
record) or ``application/x-npy`` (a structured array, one element per record, the same
field names: scores as float64, other fields as text).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Mapping, Sequence

import numpy as np

from tce_backends.errors import UsageError

from .results import Prediction, TaskResult

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
RESPONSE_TYPES = (JSON, CSV, NPY)
FALLBACK_FIELD = "calibration-fallback"
# Accept wildcards -> the type they get
_WILDCARDS = {"*/*": JSON, "application/*": JSON, "text/*": CSV}


class UnsupportedMediaType(UsageError):
    """A request Content-Type or a response Accept that the seed formats do not cover."""


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


def task_records(predictions: Sequence[Prediction], task: str) -> list[dict[str, str]]:
    """One task's seed records, flagged when its calibration fell back for any of them."""
    records = [seed_record(p[task]) for p in predictions]
    if any(p[task].calibration_fallback for p in predictions):
        for record, prediction in zip(records, predictions, strict=True):
            record[FALLBACK_FIELD] = str(bool(prediction[task].calibration_fallback))
    return records


def to_seed_json(predictions: Sequence[Prediction], task: str | None = None) -> str:
    return json.dumps({"predictions": task_records(predictions, _task(predictions, task))})


def to_seed_csv(predictions: Sequence[Prediction], task: str | None = None) -> str:
    """One header line with the JSON field names, then one line per record."""
    return seed_csv(task_records(predictions, _task(predictions, task)))


def seed_rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Every task's seed record: a task's fields alone for a one-task model, else
    ``{task: fields}`` per record."""
    if not predictions:
        return []
    tasks = list(predictions[0].tasks)
    if len(tasks) == 1:
        return task_records(predictions, tasks[0])
    per_task = {task: task_records(predictions, task) for task in tasks}
    return [{task: per_task[task][index] for task in tasks} for index in range(len(predictions))]


def _flat(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Several tasks' fields as ``<task>.<field>``; one task's as they are."""
    return [{f"{task}.{name}": value for task, fields in row.items() for name, value in fields.items()}
            if any(isinstance(value, Mapping) for value in row.values()) else row for row in rows]


def seed_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Records as CSV with a header of their field names; several tasks' fields are
    named ``<task>.<field>``."""
    flat = _flat(rows)
    buffer = io.StringIO()
    if flat:
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    return buffer.getvalue()


def seed_npy(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Records as a ``.npy`` structured array (no objects: loads without pickle), with
    the CSV's field names: a field whose every value is a number as float64, else text."""
    flat = _flat(rows)
    names = list(flat[0]) if flat else []
    columns = {}
    for name in names:
        values = [str(row[name]) for row in flat]
        try:
            columns[name] = np.array([float(v) for v in values], dtype=np.float64)
        except ValueError:
            columns[name] = np.array(values, dtype=np.str_)
    array = np.empty(len(flat), dtype=[(name, column.dtype) for name, column in columns.items()])
    for name, column in columns.items():
        array[name] = column
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def short(value: object) -> str:
    """``repr`` of a caller's header value, cut to a line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def media_type(value: str | None, default: str = JSON) -> str:
    """``type/subtype`` of a Content-Type or Accept entry, lower case, without parameters."""
    media = (value or "").split(";")[0].strip().lower()
    return default if media in ("", "*/*") else media


def response_type(accept: str | None) -> str:
    """The first type in ``accept`` that the seed formats have (order decides, q-values
    are not weighed); JSON when it names none or a wildcard."""
    if not (accept or "").strip():
        return JSON
    for entry in str(accept).split(","):
        media = media_type(entry, default="*/*")
        if media in RESPONSE_TYPES:
            return media
        if media in _WILDCARDS:
            return _WILDCARDS[media]
    raise UnsupportedMediaType(f"unsupported Accept {short(accept)}; use one of {', '.join(RESPONSE_TYPES)}")


def seed_response(predictions: Sequence[Prediction], media: str) -> str | bytes:
    """The body for a response type ``response_type`` chose: text for JSON and CSV."""
    rows = seed_rows(predictions)
    if media == JSON:
        return json.dumps({"predictions": rows})
    if media == CSV:
        return seed_csv(rows)
    if media == NPY:
        return seed_npy(rows)
    raise UnsupportedMediaType(f"unsupported response type {media!r}; use one of {', '.join(RESPONSE_TYPES)}")
