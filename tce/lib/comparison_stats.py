"""Seed 002's statistical tests of a new model against a previous one on the same records
(its "Statistical Tests"), with SciPy:

- paired t-test of the score differences (``scipy.stats.ttest_rel``);
- Wilcoxon's signed-rank test, the non-parametric alternative (``scipy.stats.wilcoxon``,
  zero differences dropped as in SciPy's default);
- McNemar's test of the records one model calls right and the other wrong, at each of
  the seed's thresholds (a record is called positive when its score is at least the
  threshold): chi-square with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` on
  one degree of freedom, and the exact binomial p-value beside it (``scipy.stats.binomtest``),
  which is the one to read when few records disagree.

A test is ``significant`` when its p-value is below ``ALPHA``. Two identical score
columns have nothing to test: statistic 0 and p-value 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05

TestResult = dict[str, float | int | bool]


def _result(statistic: float, p_value: float, **extra: float | int) -> TestResult:
    return {**extra, "statistic": float(statistic), "p_value": float(p_value), "significant": bool(p_value < ALPHA)}


def paired_t_test(new: np.ndarray, previous: np.ndarray) -> TestResult:
    """Is the mean of ``new - previous`` zero?"""
    new, previous = np.asarray(new, dtype=np.float64), np.asarray(previous, dtype=np.float64)
    if not np.any(new != previous):
        return _result(0.0, 1.0, mean_difference=0.0)
    test = stats.ttest_rel(new, previous)
    return _result(test.statistic, test.pvalue, mean_difference=float(np.mean(new - previous)))


def wilcoxon_test(new: np.ndarray, previous: np.ndarray) -> TestResult:
    """Is ``new - previous`` symmetric about zero?"""
    new, previous = np.asarray(new, dtype=np.float64), np.asarray(previous, dtype=np.float64)
    differences = new - previous
    if not np.any(differences):
        return _result(0.0, 1.0, median_difference=0.0)
    test = stats.wilcoxon(new, previous)
    return _result(test.statistic, test.pvalue, median_difference=float(np.median(differences)))


def mcnemar_test(labels: np.ndarray, new: np.ndarray, previous: np.ndarray, threshold: float) -> TestResult:
    """Do the two models' right/wrong calls at ``threshold`` differ? (binary labels 0/1)"""
    labels = np.asarray(labels, dtype=np.int64)
    right_new = (np.asarray(new) >= threshold).astype(np.int64) == labels
    right_previous = (np.asarray(previous) >= threshold).astype(np.int64) == labels
    only_new, only_previous = int(np.sum(right_new & ~right_previous)), int(np.sum(~right_new & right_previous))
    discordant = only_new + only_previous
    counts = {"new_right_previous_wrong": only_new, "new_wrong_previous_right": only_previous}
    if discordant == 0:
        return {**_result(0.0, 1.0, **counts), "exact_p_value": 1.0}
    statistic = (abs(only_new - only_previous) - 1) ** 2 / discordant
    exact = stats.binomtest(only_new, discordant, 0.5).pvalue
    return {**_result(statistic, stats.chi2.sf(statistic, 1), **counts), "exact_p_value": float(exact)}


def paired_tests(labels: np.ndarray, new: np.ndarray, previous: np.ndarray, thresholds: Sequence[float]
                 ) -> dict[str, TestResult | dict[str, TestResult]]:
    """The three tests; McNemar's by threshold (key: the threshold as the seed writes it)."""
    return {"paired_t_test": paired_t_test(new, previous), "wilcoxon": wilcoxon_test(new, previous),
            "mcnemar": {str(t): mcnemar_test(labels, new, previous, t) for t in thresholds}}
