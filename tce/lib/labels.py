"""Where the scores and true labels of each task live in a prediction file (the column
rules of ``tce_client.columns``), and true labels as class indices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec
from tce_client.columns import probability_columns, score_field_calibrated_column, true_label_column


@dataclass(frozen=True)
class ScoreColumns:
    """Where one task's scores live in a predictions file."""

    task: TaskSpec
    columns: tuple[str, ...]   # prob_class columns, or the single score-field column
    score_field: bool          # True: one class-1 score column

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[list(self.columns)].to_numpy(dtype=np.float64)
        if self.score_field:
            return np.concatenate([1.0 - values, values], axis=1)
        return values

    def calibrated_columns(self, single_task: bool) -> list[str]:
        if self.score_field:
            return [score_field_calibrated_column(self.task.name)]
        return probability_columns(self.task.name, self.task.num_classes, single_task, calibrated=True)


def score_columns(tasks: Sequence[TaskSpec], frame: pd.DataFrame, single: bool | None = None) -> list[ScoreColumns]:
    """``single``: the file follows the one-task naming (default: when there is one task)."""
    found = []
    single = len(tasks) == 1 if single is None else single
    for task in tasks:
        raw_columns = tuple(probability_columns(task.name, task.num_classes, single))
        if all(c in frame for c in raw_columns):
            found.append(ScoreColumns(task, raw_columns, False))
        elif task.kind == "binary" and task.name in frame:
            found.append(ScoreColumns(task, (task.name,), True))
        else:
            raise UsageError(f"no scores for task {task.name!r}: expected columns {list(raw_columns)}"
                             + (f" or a score-field column {task.name!r}" if task.kind == "binary" else ""))
    return found


def label_column(task: TaskSpec, tasks: Sequence[TaskSpec], overrides: Mapping[str, str]) -> str:
    return overrides.get(task.name, true_label_column(task.name, len(tasks) == 1))


def true_labels(frame: pd.DataFrame, task: TaskSpec, column: str) -> np.ndarray:
    """Class indices from a label column of class names or indices; a gap is an error."""
    if column not in frame:
        raise UsageError(f"no label column {column!r} for task {task.name!r} (use --label {task.name}=COLUMN)")
    values = frame[column]
    empty = int(values.isna().sum())
    if empty:
        raise UsageError(f"label column {column!r} is empty in {empty} of {len(values)} rows; evaluate and fit "
                         "on labelled rows only")
    if values.dtype == object or str(values.dtype).startswith("str"):
        lookup = {name: index for index, name in enumerate(task.classes)}
        texts = values.astype(str)
        unknown = sorted(set(texts) - set(lookup))
        indices = [v for v in unknown if v.isdigit() and int(v) < task.num_classes]
        if unknown and len(indices) == len(unknown) and set(texts) <= set(lookup) | set(indices):
            return np.array([lookup[v] if v in lookup else int(v) for v in texts], dtype=np.int64)
        if unknown:
            raise UsageError(f"label column {column!r} holds values that are not classes of {task.name!r}: "
                             f"{unknown[:5]}; {_valid(task)}")
        return texts.map(lookup).to_numpy(dtype=np.int64)
    numbers = values.to_numpy(dtype=np.float64)
    if numbers.size == 0:
        return numbers.astype(np.int64)
    if not np.all(np.isfinite(numbers)) or np.any(numbers != np.round(numbers)) or numbers.min() < 0 \
            or numbers.max() >= task.num_classes:
        raise UsageError(f"label column {column!r} of task {task.name!r} holds numbers that are not class "
                         f"indices; {_valid(task)}")
    return numbers.astype(np.int64)


def _valid(task: TaskSpec) -> str:
    """What a label of ``task`` may be, for error messages."""
    return (f"the classes are {', '.join(repr(c) for c in task.classes)} "
            f"(or their indices 0..{task.num_classes - 1})")
