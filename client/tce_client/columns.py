"""Prediction-file column names (seed 001), in one place: the client's frame output
and ``tce calibrate`` (fit, apply, report) both read and write files by these rules.

- one task: ``prob_class_<i>`` and ``calibrated_prob_class_<i>``; its true labels in ``label``;
- several tasks: the same prefixed by ``<task>_``; true labels in ``label_<task>``;
- a binary score field (seed 000's multi-task mode) may instead carry its class-1
  score in column ``<task>``, calibrated in ``<task>_calibrated``;
- per task the predicted ``<task>_label``, its ``<task>_decision`` (the calibration's
  decision policy, else the label; left out for servers that do not send it) and
  ``<task>_calibration_fallback``, then
  one ``calibration_version`` column and one ``release`` column (the release that
  answered; left out for servers that do not say).
"""
from __future__ import annotations

import re

VERSION_COLUMN = "calibration_version"
RELEASE_COLUMN = "release"


def _prefix(task: str, single_task: bool) -> str:
    return "" if single_task else f"{task}_"


def probability_columns(task: str, num_classes: int, single_task: bool, calibrated: bool = False) -> list[str]:
    kind = "calibrated_prob_class" if calibrated else "prob_class"
    return [f"{_prefix(task, single_task)}{kind}_{i}" for i in range(num_classes)]


def score_field_calibrated_column(task: str) -> str:
    return f"{task}_calibrated"


def predicted_label_column(task: str) -> str:
    return f"{task}_label"


def decision_column(task: str) -> str:
    return f"{task}_decision"


def fallback_column(task: str) -> str:
    return f"{task}_calibration_fallback"


def true_label_column(task: str, single_task: bool) -> str:
    return "label" if single_task else f"label_{task}"


def single_task_class_index(column: str) -> int | None:
    """``i`` of a one-task ``prob_class_<i>`` column, else None."""
    match = re.fullmatch(r"prob_class_(\d+)", column)
    return int(match.group(1)) if match else None


def parse_probability_column(column: str) -> tuple[str | None, bool, int] | None:
    """(task or None for the one-task naming, calibrated?, class index) of a
    probability column, else None."""
    match = re.fullmatch(r"(calibrated_)?prob_class_(\d+)", column)
    if match:
        return None, bool(match.group(1)), int(match.group(2))
    match = re.fullmatch(r"(.+?)_(calibrated_)?prob_class_(\d+)", column)
    if match:
        return match.group(1), bool(match.group(2)), int(match.group(3))
    return None


def tasks_in_columns(columns: list[str]) -> dict[str | None, int]:
    """The tasks whose raw ``prob_class_0 .. <k-1>`` columns a file holds, with k
    (key None: the one-task naming)."""
    indices: dict[str | None, set[int]] = {}
    for column in columns:
        parsed = parse_probability_column(str(column))
        if parsed is not None and not parsed[1]:
            indices.setdefault(parsed[0], set()).add(parsed[2])
    return {task: len(found) for task, found in indices.items() if found == set(range(len(found))) and len(found) > 1}
