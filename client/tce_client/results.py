"""Typed results: one ``Prediction`` per record, one ``TaskResult`` per task; and the
same results as prediction-file columns (``tce_client.columns`` names them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from . import columns as names

if TYPE_CHECKING:
    import pandas as pd

    from .schema import EnsembleSchema, TaskInfo


@dataclass(frozen=True)
class TaskResult:
    task: str
    classes: tuple[str, ...]
    raw: np.ndarray          # float32 [classes]
    calibrated: np.ndarray   # float32 [classes]
    label: str               # class name, argmax of raw (seed 000)
    calibration_fallback: bool
    # the action the calibration's decision policy chose (tce_backends.decisions); the label for a
    # task without a policy, and from a server built before decisions
    decision: str = ""

    def __post_init__(self) -> None:
        if not self.decision:
            object.__setattr__(self, "decision", self.label)

    @property
    def raw_score(self) -> float:
        """Binary tasks: class-1 probability (the seed's ``legacy-score``)."""
        return float(self.raw[-1])

    @property
    def calibrated_score(self) -> float:
        return float(self.calibrated[-1])


@dataclass(frozen=True)
class Prediction:
    tasks: dict[str, TaskResult]
    calibration_version: str
    release: str = ""  # the release that answered ("" from a server built before releases)

    def __getitem__(self, task: str) -> TaskResult:
        return self.tasks[task]


@dataclass(frozen=True)
class TaskColumns:
    """One task's results for many records, as arrays."""

    name: str
    raw: np.ndarray          # [records, classes]
    calibrated: np.ndarray   # [records, classes]
    label: np.ndarray        # [records] str
    fallback: np.ndarray     # [records] bool
    decision: np.ndarray | None = None  # [records] str; None: the server sent none (no column)


def _texts(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)], dtype=object)


def prediction_columns(tasks: Sequence[TaskColumns], versions: np.ndarray,
                       releases: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Seed 001's columns: ``prob_class_<i>`` and ``calibrated_prob_class_<i>`` for
    a single-task model, ``<task>_prob_class_<i>`` (and calibrated) for several,
    per class raw then calibrated; then per task ``<task>_label``, ``<task>_decision`` (when
    the server sends it) and ``<task>_calibration_fallback``; then the calibration version
    and (when the server says) the release."""
    single = len(tasks) == 1
    columns: dict[str, np.ndarray] = {}
    for task in tasks:
        classes = task.raw.shape[1]
        for index, (raw_column, calibrated_column) in enumerate(zip(
                names.probability_columns(task.name, classes, single),
                names.probability_columns(task.name, classes, single, calibrated=True), strict=True)):
            columns[raw_column] = task.raw[:, index].astype(np.float64)
            columns[calibrated_column] = task.calibrated[:, index].astype(np.float64)
        columns[names.predicted_label_column(task.name)] = task.label
        if task.decision is not None:
            columns[names.decision_column(task.name)] = task.decision
        columns[names.fallback_column(task.name)] = task.fallback.astype(bool)
    columns[names.VERSION_COLUMN] = versions
    if releases is not None:
        columns[names.RELEASE_COLUMN] = releases
    return columns


def _releases(schema: "EnsembleSchema", outputs: Mapping[str, np.ndarray], rows: int) -> np.ndarray | None:
    """The release of each row; None when the schema has no release output (an older build),
    "" per row when the server did not send it."""
    name = schema.outputs.get("release")
    if name is None:
        return None
    if name not in outputs or outputs[name] is None:
        return np.full(rows, "", dtype=object)
    return _texts(outputs[name])


def _decisions(task: "TaskInfo", outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """A task's decisions; None when the schema has no decision output (a server built before)."""
    name = task.outputs.get("decision")
    return None if name is None or outputs.get(name) is None else _texts(outputs[name])


def output_columns(schema: "EnsembleSchema", outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ensemble's output tensors for a batch of records -> prediction-file columns."""
    fallback = outputs[schema.outputs["calibration_fallback"]]
    tasks = [TaskColumns(task.name, outputs[task.outputs["raw"]], outputs[task.outputs["calibrated"]],
                         _texts(outputs[task.outputs["label"]]), fallback[:, index], _decisions(task, outputs))
             for index, task in enumerate(schema.tasks)]
    versions = _texts(outputs[schema.outputs["calibration_version"]])
    return prediction_columns(tasks, versions, _releases(schema, outputs, versions.shape[0]))


def predictions_from_outputs(schema: "EnsembleSchema", outputs: Mapping[str, np.ndarray]) -> list[Prediction]:
    """The ensemble's output tensors for a batch of records -> one ``Prediction`` per record."""
    versions = _texts(outputs[schema.outputs["calibration_version"]])
    releases = _releases(schema, outputs, versions.shape[0])
    fallback = outputs[schema.outputs["calibration_fallback"]]
    labels = {task.name: _texts(outputs[task.outputs["label"]]) for task in schema.tasks}
    decisions = {task.name: _decisions(task, outputs) for task in schema.tasks}
    return [Prediction({task.name: TaskResult(task=task.name, classes=task.classes,
                                              raw=outputs[task.outputs["raw"]][row],
                                              calibrated=outputs[task.outputs["calibrated"]][row],
                                              label=labels[task.name][row],
                                              calibration_fallback=bool(fallback[row, index]),
                                              decision=_row(decisions[task.name], row))
                        for index, task in enumerate(schema.tasks)}, versions[row],
                       "" if releases is None else releases[row])
            for row in range(versions.shape[0])]


def _row(values: np.ndarray | None, row: int) -> str:
    return "" if values is None else str(values[row])


def output_column_names(schema: "EnsembleSchema") -> list[str]:
    """The columns ``output_columns`` makes, in order, known before any record is scored."""
    empty: dict[str, np.ndarray] = {schema.outputs["calibration_version"]: np.empty((0, 1), dtype=object),
                                    schema.outputs["calibration_fallback"]: np.empty((0, len(schema.tasks)), bool)}
    if "release" in schema.outputs:
        empty[schema.outputs["release"]] = np.empty((0, 1), dtype=object)
    for task in schema.tasks:
        empty[task.outputs["raw"]] = empty[task.outputs["calibrated"]] = np.empty((0, len(task.classes)))
        for part in ("label", "decision"):
            if part in task.outputs:
                empty[task.outputs[part]] = np.empty((0, 1), dtype=object)
    return list(output_columns(schema, empty))


def predictions_to_frame(predictions: list[Prediction]) -> "pd.DataFrame":
    """Typed predictions as a prediction file's columns (``prediction_columns``); needs pandas."""
    import pandas as pd

    if not predictions:
        return pd.DataFrame()
    tasks = [TaskColumns(name, np.stack([p[name].raw for p in predictions]),
                         np.stack([p[name].calibrated for p in predictions]),
                         np.array([p[name].label for p in predictions], dtype=object),
                         np.array([p[name].calibration_fallback for p in predictions], dtype=bool),
                         np.array([p[name].decision for p in predictions], dtype=object))
             for name in predictions[0].tasks]
    versions = np.array([p.calibration_version for p in predictions], dtype=object)
    releases = np.array([p.release for p in predictions], dtype=object) if any(p.release for p in predictions) \
        else None
    return pd.DataFrame(prediction_columns(tasks, versions, releases))
