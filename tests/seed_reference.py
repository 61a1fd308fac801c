"""Seed 000's reference calibration functions, verbatim in behaviour: the oracle
our vectorised calibration must match. (Test code only: per-element loops.)"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np


def _interpolate_score(raw_score: float, lookup_table: List[Tuple[float, float]]) -> float:
    if raw_score <= lookup_table[0][0]:
        return lookup_table[0][1]
    if raw_score >= lookup_table[-1][0]:
        return lookup_table[-1][1]
    for i in range(len(lookup_table) - 1):
        if lookup_table[i][0] <= raw_score <= lookup_table[i + 1][0]:
            x1, y1 = lookup_table[i]
            x2, y2 = lookup_table[i + 1]
            if x2 == x1:
                return y1
            return y1 + (y2 - y1) * (raw_score - x1) / (x2 - x1)
    return lookup_table[-1][1]


def apply_percentile_calibration(scores: np.ndarray, percentile_mapping: List[Tuple[float, float]]) -> np.ndarray:
    calibrated = np.zeros_like(scores)
    for i in range(scores.shape[0]):
        raw_class1_prob = scores[i, 1]
        calibrated_class1_prob = _interpolate_score(raw_class1_prob, percentile_mapping)
        calibrated[i, 1] = calibrated_class1_prob
        calibrated[i, 0] = 1 - calibrated_class1_prob
    return calibrated


def apply_regular_binary_calibration(scores: np.ndarray, calibrator: List[Tuple[float, float]]) -> np.ndarray:
    calibrated = np.zeros_like(scores)
    for i in range(scores.shape[0]):
        calibrated[i, 1] = _interpolate_score(scores[i, 1], calibrator)
        calibrated[i, 0] = 1 - calibrated[i, 1]
    return calibrated


def apply_regular_multiclass_calibration(scores: np.ndarray,
                                         calibrators: Dict[str, List[Tuple[float, float]]]) -> np.ndarray:
    calibrated = np.zeros_like(scores)
    for i in range(scores.shape[1]):
        class_name = str(i)
        if class_name in calibrators:
            for j in range(scores.shape[0]):
                calibrated[j, i] = _interpolate_score(scores[j, i], calibrators[class_name])
        else:
            calibrated[:, i] = scores[:, i]
    row_sums = calibrated.sum(axis=1)
    calibrated = calibrated / row_sums[:, np.newaxis]
    return calibrated
