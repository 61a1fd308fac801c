"""Fitting calibration at build time (scikit-learn) and sampling it into the lookup
tables the server applies. Nothing here runs at serve time."""
from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from tce_backends.calibration import LookupTable, TaskCalibration, sample_table
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec

FitMethod = Literal["isotonic", "sigmoid", "percentile"]
FIT_METHODS: tuple[str, ...] = ("isotonic", "sigmoid", "percentile")
DEFAULT_POINTS = 1000  # as in seed 000's CALIBRATION_SAMPLE_POINTS


def fit_table(scores: np.ndarray, targets: np.ndarray, method: FitMethod, points: int = DEFAULT_POINTS
              ) -> LookupTable:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.size < 2:
        raise UsageError("calibration needs at least 2 scored examples")
    if method == "isotonic":
        # Keep off exact 0/1: one unlucky bin would otherwise make log-loss infinite.
        floor = 0.5 / scores.size
        model = IsotonicRegression(y_min=floor, y_max=1.0 - floor, out_of_bounds="clip").fit(scores, targets)
        return sample_table(model.predict, points)
    if method == "sigmoid":  # Platt scaling on the logit of the score
        if len(np.unique(targets)) < 2:
            raise UsageError("sigmoid calibration needs both outcomes in the data")
        model = LogisticRegression(C=1e6).fit(_logit(scores)[:, None], targets)
        return sample_table(lambda x: model.predict_proba(_logit(x)[:, None])[:, 1], points)
    if method == "percentile":  # raw score -> its percentile among the scored population
        quantiles = np.quantile(scores, np.linspace(0.0, 1.0, points))
        return LookupTable(quantiles, np.linspace(0.0, 1.0, points))
    raise UsageError(f"unknown calibration method {method!r}; known: {list(FIT_METHODS)}")


def fit_task(task: TaskSpec, probabilities: np.ndarray, labels: np.ndarray, method: FitMethod,
             points: int = DEFAULT_POINTS) -> TaskCalibration:
    """Binary: one table on class 1. Multiclass: one-vs-rest table per class."""
    labels = np.asarray(labels).astype(int)
    if task.kind == "binary":
        table = fit_table(probabilities[:, 1], labels == 1, method, points)
        return TaskCalibration.of("percentile" if method == "percentile" else "binary", {1: table})
    if method == "percentile":
        raise UsageError(f"percentile calibration is binary-only (seed 000); task {task.name!r} is multiclass")
    tables = {c: fit_table(probabilities[:, c], labels == c, method, points) for c in range(task.num_classes)}
    return TaskCalibration.of("multiclass", tables)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))
