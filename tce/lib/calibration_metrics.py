"""Discrimination and calibration metrics (seed 002): AUROC, ECE, MCE, Brier, log-loss."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class TaskMetrics:
    auroc: float
    ece: float
    mce: float
    brier: float
    log_loss: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def confidence_and_hits(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: class-1 probability vs label. Multiclass: top-label confidence vs correctness."""
    if probabilities.shape[1] == 2:
        return probabilities[:, 1], (labels == 1).astype(np.float64)
    return probabilities.max(axis=1), (probabilities.argmax(axis=1) == labels).astype(np.float64)


def reliability_bins(confidence: np.ndarray, hits: np.ndarray, bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, observed frequency, count."""
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        frequency = np.bincount(index, weights=hits, minlength=bins) / counts
    return mean_conf, frequency, counts


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """(ECE, MCE) over equal-width bins: class-1 probability for two classes,
    top-class confidence for more."""
    mean_conf, frequency, counts = reliability_bins(*confidence_and_hits(probabilities, labels), bins)
    used = counts > 0
    gaps = np.abs(mean_conf[used] - frequency[used])
    return float((gaps * counts[used]).sum() / counts.sum()), float(gaps.max())


def task_metrics(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> TaskMetrics:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    classes = probabilities.shape[1]
    if classes == 2:
        auroc = roc_auc_score(labels, probabilities[:, 1]) if len(np.unique(labels)) == 2 else float("nan")
    else:
        present = np.unique(labels)
        normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
        auroc = (roc_auc_score(labels, normalised, multi_class="ovr", labels=list(range(classes)))
                 if len(present) == classes else float("nan"))
    ece, mce = calibration_error(probabilities, labels, bins)
    onehot = np.eye(classes)[labels]
    brier = float(np.mean(((probabilities - onehot) ** 2).sum(axis=1)) / (2 if classes == 2 else 1))
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    return TaskMetrics(auroc=float(auroc), ece=ece, mce=mce, brier=brier, log_loss=float(-np.log(picked).mean()))


_HEADERS = {"auroc": ("AUROC", 7), "ece": ("ECE", 7), "mce": ("MCE", 7), "brier": ("Brier", 7),
            "log_loss": ("log-loss", 9)}


def metrics_table(results: Mapping[str, Mapping[str, TaskMetrics]], fields: Sequence[str]) -> str:
    """One line per task and score kind (raw, calibrated) with the chosen metrics."""
    width = max([10, *(len(task) + 1 for task in results)])
    header = " ".join(f"{_HEADERS[f][0]:>{_HEADERS[f][1]}}" for f in fields)
    lines = [f"{'task':<{width}} {'scores':<11} {header}"]
    for task, pair in results.items():
        for kind, metrics in pair.items():
            values = " ".join(f"{getattr(metrics, f):{_HEADERS[f][1]}.4f}" for f in fields)
            lines.append(f"{task:<{width}} {kind:<11} {values}")
    return "\n".join(lines)
