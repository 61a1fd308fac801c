"""Seed 002's evaluation metrics, computed with scikit-learn where it has them.

Binary tasks are scored on the class-1 probability: AUROC, average precision, F1 /
precision / recall at 0.3, 0.5 and 0.7 (a record is positive when its score is at
least the threshold; ``f1_score`` is the one at 0.5), log-loss, Brier, ECE and MCE.
Multiclass tasks: macro and micro AUROC, average precision, F1, precision and recall
(the predicted class is the arg-max), per class ``auroc_class_<i>``,
``average_precision_class_<i>`` and ``f1_score_class_<i>`` (one vs rest, score above
0.5 as in the seed), log-loss, Brier, and ECE/MCE on the top-class confidence.
Calibrated multiclass rows need not sum to 1 (each class has its own table): they
are divided by their sum where a metric needs a distribution (macro/micro AUROC,
log-loss, Brier).

Comparison with a previous model's class-1 score (binary tasks), at seed 002's
``COMPARISON_METRICS`` level: "basic" gives both models' metrics, their differences and
Pearson and Spearman correlation; "all" adds agreement at each threshold and the score
distributions (mean, std, quartiles). With the seed's ``STATISTICAL_TESTS``: the paired
t-test, Wilcoxon and McNemar at each threshold (``tce.lib.comparison_stats``), DeLong's
test for the AUROC difference and bootstrap confidence intervals for the AUROC and
average-precision differences. Predictions without calibrated scores compare raw only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats
from sklearn import metrics as sk

from tce.lib.calibration_metrics import calibration_error
from tce.lib.comparison_stats import paired_tests

THRESHOLDS = (0.3, 0.5, 0.7)
COMPARED = ("auroc", "average_precision", "f1_score", "log_loss", "brier", "ece")

Metrics = dict[str, float]


def _defined(labels: np.ndarray) -> bool:
    """Ranking metrics need both a positive and a negative."""
    return len(np.unique(labels)) == 2


def binary_metrics(labels: np.ndarray, score: np.ndarray, bins: int = 15) -> Metrics:
    """``score``: class-1 probability per record; ``labels``: 0/1."""
    labels = np.asarray(labels, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    ranked = _defined(labels)
    out: Metrics = {
        "auroc": float(sk.roc_auc_score(labels, score)) if ranked else math.nan,
        "average_precision": float(sk.average_precision_score(labels, score)) if ranked else math.nan,
    }
    for threshold in THRESHOLDS:
        predicted = (score >= threshold).astype(np.int64)
        out[f"f1_score_at_{threshold}"] = float(sk.f1_score(labels, predicted, zero_division=0))
        out[f"precision_at_{threshold}"] = float(sk.precision_score(labels, predicted, zero_division=0))
        out[f"recall_at_{threshold}"] = float(sk.recall_score(labels, predicted, zero_division=0))
    out["f1_score"] = out["f1_score_at_0.5"]
    out["log_loss"] = float(sk.log_loss(labels, np.clip(score, 0.0, 1.0), labels=[0, 1]))
    out["brier"] = float(sk.brier_score_loss(labels, np.clip(score, 0.0, 1.0)))
    out["ece"], out["mce"] = calibration_error(np.stack([1 - score, score], axis=1), labels, bins)
    out["positive_rate"] = float(labels.mean())
    return out


def as_distribution(probabilities: np.ndarray) -> np.ndarray:
    totals = probabilities.sum(axis=1, keepdims=True)
    return np.divide(probabilities, totals, out=np.full_like(probabilities, 1.0 / probabilities.shape[1]),
                     where=totals > 0)


def multiclass_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> Metrics:
    """``probabilities``: [records, classes]; ``labels``: class indices."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = probabilities.shape[1]
    everyone = list(range(classes))
    distribution = as_distribution(probabilities)
    onehot = np.eye(classes, dtype=np.int64)[labels]
    all_present = len(np.unique(labels)) == classes
    predicted = probabilities.argmax(axis=1)
    out: Metrics = {
        "auroc": float(sk.roc_auc_score(labels, distribution, multi_class="ovr", average="macro", labels=everyone))
        if all_present else math.nan,
        "auroc_micro": float(sk.roc_auc_score(onehot, probabilities, average="micro")) if all_present else math.nan,
        "average_precision": float(sk.average_precision_score(onehot, probabilities, average="macro"))
        if all_present else math.nan,
        "average_precision_micro": float(sk.average_precision_score(onehot, probabilities, average="micro")),
        "accuracy": float(sk.accuracy_score(labels, predicted)),
    }
    for average in ("macro", "micro"):
        out[f"f1_score_{average}"] = float(sk.f1_score(labels, predicted, labels=everyone, average=average,
                                                       zero_division=0))
        out[f"precision_{average}"] = float(sk.precision_score(labels, predicted, labels=everyone, average=average,
                                                               zero_division=0))
        out[f"recall_{average}"] = float(sk.recall_score(labels, predicted, labels=everyone, average=average,
                                                         zero_division=0))
    out["f1_score"] = out["f1_score_macro"]
    for i in everyone:
        truth, score = onehot[:, i], probabilities[:, i]
        out[f"auroc_class_{i}"] = float(sk.roc_auc_score(truth, score)) if _defined(truth) else math.nan
        out[f"average_precision_class_{i}"] = float(sk.average_precision_score(truth, score)) \
            if _defined(truth) else math.nan
        out[f"f1_score_class_{i}"] = float(sk.f1_score(truth, (score > 0.5).astype(np.int64), zero_division=0))
    out["log_loss"] = float(sk.log_loss(labels, distribution, labels=everyone))
    out["brier"] = float(np.mean(((distribution - onehot) ** 2).sum(axis=1)))
    out["ece"], out["mce"] = calibration_error(probabilities, labels, bins)
    return out


def task_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> Metrics:
    if probabilities.shape[1] == 2:
        return binary_metrics(labels, probabilities[:, 1], bins)
    return multiclass_metrics(labels, probabilities, bins)


# -- comparison with a previous model ---------------------------------------------

@dataclass(frozen=True)
class DeLong:
    auroc_new: float
    auroc_previous: float
    z: float
    p_value: float

    def as_dict(self) -> Metrics:
        return {"auroc_new": self.auroc_new, "auroc_previous": self.auroc_previous, "z": self.z,
                "p_value": self.p_value}


def _structural_components(labels: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's per-positive and per-negative placement values (Sun & Xu's
    fast algorithm, with mid-ranks for ties)."""
    positives, negatives = score[labels == 1], score[labels == 0]
    m, n = len(positives), len(negatives)
    ranks = stats.rankdata(np.concatenate([positives, negatives]))
    within_positives, within_negatives = stats.rankdata(positives), stats.rankdata(negatives)
    auroc = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    return float(auroc), (ranks[:m] - within_positives) / n, 1.0 - (ranks[m:] - within_negatives) / m


def delong_test(labels: np.ndarray, new: np.ndarray, previous: np.ndarray) -> DeLong:
    """DeLong, DeLong & Clarke-Pearson (1988): are two AUROCs on the same records different?"""
    labels = np.asarray(labels, dtype=np.int64)
    auc_a, pos_a, neg_a = _structural_components(labels, np.asarray(new, dtype=np.float64))
    auc_b, pos_b, neg_b = _structural_components(labels, np.asarray(previous, dtype=np.float64))
    m, n = len(pos_a), len(neg_a)
    covariance = np.cov(np.stack([pos_a, pos_b])) / m + np.cov(np.stack([neg_a, neg_b])) / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    if variance <= 1e-18:  # the same ranking: no difference to test
        return DeLong(auc_a, auc_b, 0.0, 1.0)
    z = (auc_a - auc_b) / math.sqrt(variance)
    return DeLong(auc_a, auc_b, float(z), float(2 * stats.norm.sf(abs(z))))


def bootstrap_deltas(labels: np.ndarray, new: np.ndarray, previous: np.ndarray, samples: int = 200,
                     seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of AUROC and AP differences (new - previous) over records
    drawn with replacement."""
    rng = np.random.default_rng(seed)
    rows = len(labels)
    deltas: dict[str, list[float]] = {"auroc": [], "average_precision": []}
    for _ in range(samples):
        pick = rng.integers(0, rows, rows)
        truth = labels[pick]
        if not _defined(truth):
            continue
        deltas["auroc"].append(sk.roc_auc_score(truth, new[pick]) - sk.roc_auc_score(truth, previous[pick]))
        deltas["average_precision"].append(sk.average_precision_score(truth, new[pick])
                                           - sk.average_precision_score(truth, previous[pick]))
    tail = (1 - level) / 2 * 100
    return {f"{name}_delta_ci": [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
            if values else [math.nan, math.nan] for name, values in deltas.items()}


COMPARISON_DETAIL = ("basic", "all")


def score_summary(score: np.ndarray) -> Metrics:
    """Mean, standard deviation and quartiles of one score column."""
    q25, median, q75 = np.percentile(score, [25, 50, 75])
    return {"mean": float(np.mean(score)), "std": float(np.std(score)), "min": float(np.min(score)),
            "q25": float(q25), "median": float(median), "q75": float(q75), "max": float(np.max(score))}


def _all_detail(raw: np.ndarray, calibrated: np.ndarray | None, previous: np.ndarray) -> dict:
    """Agreement of the called labels (calibrated scores where there are some: the ones
    served) and the score distributions."""
    called = calibrated if calibrated is not None else raw
    result: dict = {"agreement_scores": "calibrated" if calibrated is not None else "raw"}
    for threshold in THRESHOLDS:
        result[f"agreement_at_{threshold}"] = float(np.mean((called >= threshold) == (previous >= threshold)))
    result["score_distribution"] = {"raw": score_summary(raw), "previous": score_summary(previous),
                                    "difference": score_summary(raw - previous)}
    if calibrated is not None:
        result["score_distribution"]["calibrated"] = score_summary(calibrated)
    return result


def _tests(labels: np.ndarray, raw: np.ndarray, previous: np.ndarray, bootstrap_samples: int) -> dict:
    result: dict = dict(paired_tests(labels, raw, previous, THRESHOLDS))
    if _defined(labels):
        result["delong"] = delong_test(labels, raw, previous).as_dict()
        result["bootstrap"] = {"samples": bootstrap_samples,
                               **bootstrap_deltas(labels, raw, previous, bootstrap_samples)}
    return result


def compare(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray | None, previous: np.ndarray,
            bins: int = 15, bootstrap_samples: int = 200, current: Mapping[str, Metrics | None] | None = None,
            detail: str = "all", tests: bool = True) -> dict:
    """The new model's class-1 scores (raw, and calibrated unless None) against a previous
    model's; ``current``: the new scores' ``binary_metrics`` by kind, when already computed.
    The tests use the raw score: it is the model's ranking, before calibration ties it."""
    if detail not in COMPARISON_DETAIL:
        raise ValueError(f"detail must be one of {COMPARISON_DETAIL}, got {detail!r}")
    labels = np.asarray(labels, dtype=np.int64)
    before = binary_metrics(labels, previous, bins)
    result: dict = {"previous": before}
    for kind, score in (("raw", raw), ("calibrated", calibrated)):
        now = current.get(kind) if current is not None else \
            (binary_metrics(labels, score, bins) if score is not None else None)
        result[f"delta_{kind}"] = {name: now[name] - before[name] for name in COMPARED} if now is not None else None
    result["pearson"] = float(stats.pearsonr(raw, previous).statistic)
    result["spearman"] = float(stats.spearmanr(raw, previous).statistic)
    if detail == "all":
        result.update(_all_detail(raw, calibrated, previous))
    if tests:
        result.update(_tests(labels, raw, previous, bootstrap_samples))
    return result
