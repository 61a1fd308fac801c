"""Typed results: one ``Prediction`` per record, one ``TaskResult`` per task."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import columns as names


@dataclass(frozen=True)
class TaskResult:
    task: str
    classes: tuple[str, ...]
    raw: np.ndarray          # float32 [classes]
    calibrated: np.ndarray   # float32 [classes]
    label: str               # class name, argmax of raw (seed 000)
    calibration_fallback: bool

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

    def __getitem__(self, task: str) -> TaskResult:
        return self.tasks[task]


def predictions_to_frame(predictions: list[Prediction]) -> pd.DataFrame:
    """Seed 001's columns: ``prob_class_<i>`` and ``calibrated_prob_class_<i>`` for
    a single-task model, ``<task>_prob_class_<i>`` (and calibrated) for several;
    plus ``<task>_label``, ``<task>_calibration_fallback`` and the calibration version."""
    columns: dict[str, list] = {}
    for prediction in predictions:
        single = len(prediction.tasks) == 1
        for name, result in prediction.tasks.items():
            classes = len(result.classes)
            # per class, raw then calibrated: the seed's column order
            for raw_column, calibrated_column, raw, calibrated in zip(
                    names.probability_columns(name, classes, single),
                    names.probability_columns(name, classes, single, calibrated=True),
                    result.raw, result.calibrated, strict=True):
                columns.setdefault(raw_column, []).append(float(raw))
                columns.setdefault(calibrated_column, []).append(float(calibrated))
            columns.setdefault(names.predicted_label_column(name), []).append(result.label)
            columns.setdefault(names.fallback_column(name), []).append(result.calibration_fallback)
        columns.setdefault(names.VERSION_COLUMN, []).append(prediction.calibration_version)
    return pd.DataFrame(columns)
