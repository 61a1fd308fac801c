"""Seed 004's quality metrics (the ``metrics`` of its ``test_metrics.json``), under its names,
computed with scikit-learn.

Per task, from true class indices and ``[records, classes]`` probabilities (the predicted
class is the arg-max, as the seed's ``outputs.max(dim=1)``):

- ``accuracy``, ``balanced_accuracy``;
- ``precision_macro``, ``recall_macro``, ``f1_macro`` and the ``_weighted`` three
  (scikit-learn's defaults, ``zero_division=0``);
- ``top_1_accuracy``, ``top_3_accuracy``, ``top_5_accuracy``: top-k only where k is below the
  number of classes (at k >= classes it is 1 by construction; the seed adds top-k "if
  available");
- ``roc_auc_micro``, ``roc_auc_macro``, ``average_precision_micro``, ``average_precision_macro``:
  one-vs-rest on the one-hot labels.

A metric scikit-learn cannot define (a class with no positive: ROC AUC) is NaN, written as the
string ``"NaN"`` as the seed writes it (``json_ready``).

Names with several tasks follow the prediction columns' rule (``tce_client.columns``): one task
keeps the seed's names; several tasks prefix each with ``<task>_`` (``reason_f1_macro``), tasks
in the model's order, each task's names in the seed's order.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
from sklearn import metrics as sk

UNDEFINED = "NaN"  # how the seed writes a metric that has no value
LABEL_METRICS = ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                 "precision_weighted", "recall_weighted", "f1_weighted")
TOP_K = (1, 3, 5)
RANKING_METRICS = ("roc_auc_micro", "roc_auc_macro", "average_precision_micro", "average_precision_macro")

Metrics = dict[str, float]


def top_k_values(num_classes: int) -> tuple[int, ...]:
    return tuple(k for k in TOP_K if k == 1 or k < num_classes)


def metric_names(num_classes: int) -> list[str]:
    """One task's metric names, in the seed's order."""
    return [*LABEL_METRICS, *(f"top_{k}_accuracy" for k in top_k_values(num_classes)), *RANKING_METRICS]


def metric_key(task: str, name: str, single_task: bool) -> str:
    """``name`` for one task; ``<task>_<name>`` when the model has several (as prediction columns)."""
    return name if single_task else f"{task}_{name}"


def _or_nan(metric: Callable[..., float], *args: Any, **kwargs: Any) -> float:
    """scikit-learn's value, or NaN where it refuses (too few classes present to define it)."""
    try:
        return float(metric(*args, **kwargs))
    except ValueError:
        return math.nan


def _label_metrics(labels: np.ndarray, predicted: np.ndarray) -> Metrics:
    out: Metrics = {"accuracy": float(sk.accuracy_score(labels, predicted)),
                    "balanced_accuracy": float(sk.balanced_accuracy_score(labels, predicted))}
    for average in ("macro", "weighted"):
        for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
            out[f"{name}_{average}"] = float(score(labels, predicted, average=average, zero_division=0))
    return {name: out[name] for name in LABEL_METRICS}


def _top_k(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    classes = probabilities.shape[1]
    # scikit-learn takes a binary task's class-1 score, not its two columns.
    score = probabilities[:, 1] if classes == 2 else probabilities
    return _or_nan(sk.top_k_accuracy_score, labels, score, k=k, labels=np.arange(classes))


def seed_metrics(labels: np.ndarray, probabilities: np.ndarray) -> Metrics:
    """One task's metrics under the seed's names. ``labels``: class indices;
    ``probabilities``: ``[records, classes]``."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2 or len(labels) != probabilities.shape[0]:
        raise ValueError(f"expected [records, classes >= 2] probabilities for {len(labels)} labels, "
                         f"got shape {probabilities.shape}")
    classes = probabilities.shape[1]
    onehot = np.eye(classes, dtype=np.int64)[labels]
    with warnings.catch_warnings():  # undefined parts show as NaN in the result, not as warnings
        warnings.simplefilter("ignore")
        out = _label_metrics(labels, probabilities.argmax(axis=1))
        for k in top_k_values(classes):
            out[f"top_{k}_accuracy"] = _top_k(labels, probabilities, k)
        for average in ("micro", "macro"):
            out[f"roc_auc_{average}"] = _or_nan(sk.roc_auc_score, onehot, probabilities, average=average)
        for average in ("micro", "macro"):
            out[f"average_precision_{average}"] = _or_nan(sk.average_precision_score, onehot, probabilities,
                                                          average=average)
    return out


def tasks_metrics(tasks: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> Metrics:
    """``(task, labels, probabilities)`` per task, in the model's order: one flat dict."""
    single = len(tasks) == 1
    return {metric_key(task, name, single): value
            for task, labels, probabilities in tasks for name, value in seed_metrics(labels, probabilities).items()}


def undefined_metrics(tasks: Sequence[tuple[str, int]]) -> Metrics:
    """Every name of ``(task, classes)`` as NaN: the seed's file shape when nothing labelled was given."""
    single = len(tasks) == 1
    return {metric_key(task, name, single): math.nan for task, classes in tasks for name in metric_names(classes)}


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float as ``"NaN"``, the seed's spelling (plain JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return UNDEFINED
    return value
