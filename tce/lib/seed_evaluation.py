"""Seed 002's own evaluation outputs and switches, so code written against the seed runs
unchanged. ``tce evaluate`` writes them beside its richer files:

- ``OUT/eval/eval_predictions.<fmt>``: the ID column (``--id-field``), the label column as
  class indices, and ``prob_class_<i>`` per class, then ``_SUCCESS`` and ``_HEALTH``;
- ``OUT/metrics/metrics.json``: one flat object in the seed's key order (``eval/auroc``,
  ``eval/average_precision``, ``eval/f1_score``, then ``f1_score_at_<t>``,
  ``precision_at_<t>``, ``recall_at_<t>`` for t in 0.3, 0.5, 0.7 for a binary task, or
  ``auroc_class_<i>``, ``f1_score_class_<i>`` per class for a multiclass one), written as
  the seed writes it (``json.dump(metrics, f, indent=2)``: an undefined metric is ``NaN``);
  in comparison mode also ``comparison/<name>`` keys;
- ``OUT/metrics/metrics_summary.txt`` in the seed's layout, ``roc_curve.jpg`` and
  ``pr_curve.jpg``, then ``_SUCCESS`` and ``_HEALTH``.

The seed evaluates the model's own probabilities, before calibration (calibration is its
downstream step and seed 001's ``prob_class_<i>`` are raw), so these files hold the raw
scores only; the calibrated ones are in the project's ``OUT/metrics.json``.

One task: exactly the seed's names. Several tasks: every key, column and plot file is
prefixed ``<task>_`` (``abuse_eval/auroc``, ``reason_auroc_class_2``,
``abuse_prob_class_1``, ``abuse_roc_curve.jpg``), as the project names prediction columns
(``tce_client.columns``); ``tce evaluate --task T`` evaluates one task of a multi-task
model under the seed's unprefixed names.

The seed's comparison switches are environment variables (``COMPARISON_MODE``,
``PREVIOUS_SCORE_FIELD``, ``COMPARISON_METRICS``, ``STATISTICAL_TESTS``,
``COMPARISON_PLOTS``); each has a command-line flag, and a flag given wins over its
variable (``comparison_switches``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from tce.lib.evaluation_metrics import COMPARISON_DETAIL, THRESHOLDS, Metrics
from tce_backends.errors import UsageError

EVAL_DIR = "eval"
METRICS_DIR = "metrics"
PREDICTIONS_STEM = "eval_predictions"
SUMMARY_TITLE = "PYTORCH MODEL EVALUATION METRICS"
KEY_METRICS = (("eval/auroc", "AUC-ROC:           "), ("eval/average_precision", "Average Precision: "),
               ("eval/f1_score", "F1 Score:          "))
COMPARISON_PREFIX = "comparison/"


def task_prefix(task: str, single_task: bool) -> str:
    """What goes before every seed name of a task: nothing for a one-task model."""
    return "" if single_task else f"{task}_"


def seed_metrics(raw: Metrics, num_classes: int) -> dict[str, float]:
    """One task's metrics under the seed's names, in its order, from ``task_metrics`` of
    the raw scores. ``eval/f1_score``: F1 at 0.5 (binary) or macro F1 of the arg-max
    (multiclass); ``eval/auroc`` and ``eval/average_precision``: macro one-vs-rest for
    multiclass."""
    out = {"eval/auroc": raw["auroc"], "eval/average_precision": raw["average_precision"],
           "eval/f1_score": raw["f1_score"]}
    if num_classes == 2:
        for threshold in THRESHOLDS:
            for name in ("f1_score", "precision", "recall"):
                out[f"{name}_at_{threshold}"] = raw[f"{name}_at_{threshold}"]
    else:
        for i in range(num_classes):
            out[f"auroc_class_{i}"] = raw[f"auroc_class_{i}"]
            out[f"f1_score_class_{i}"] = raw[f"f1_score_class_{i}"]
    return out


def _flat(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for name, inner in value.items():
            yield from _flat(inner, f"{key}/{name}")
    elif isinstance(value, (list, tuple)) and len(value) == 2:  # a confidence interval
        yield from ((f"{key}/{end}", bound) for end, bound in zip(("low", "high"), value, strict=True))
    elif value is not None:
        yield key, value


def flat_comparison(comparison: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison as flat ``comparison/<name>[/<inner>]`` keys (the seed names none):
    e.g. ``comparison/delta_raw/auroc``, ``comparison/paired_t_test/p_value``,
    ``comparison/mcnemar/0.5/p_value``, ``comparison/bootstrap/auroc_delta_ci/low``.
    What is absent (calibrated deltas without calibrated scores) has no key; the task and
    the switches are left out (the prefix and the run's settings say them)."""
    return {k: v for name, value in comparison.items() if name not in ("task", "detail", "statistical_tests")
            for k, v in _flat(value, f"{COMPARISON_PREFIX}{name}")}


def summary_text(metrics: Mapping[str, Any], prefixes: Sequence[str] = ("",)) -> str:
    """The seed's ``metrics_summary.txt``: key metrics, then every metric sorted by name.
    With several tasks the key metrics come once per task prefix, under the task's name."""
    lines = [SUMMARY_TITLE, "=" * 50, ""]
    for prefix in prefixes:
        if prefix:
            lines.append(prefix[:-1])
        lines += [f"{label}{metrics[prefix + key]:.4f}" for key, label in KEY_METRICS if prefix + key in metrics]
        if prefix and prefix != prefixes[-1]:
            lines.append("")
    lines += ["", "=" * 50, "", "ALL METRICS", "=" * 50]
    for name, value in sorted(metrics.items()):
        lines.append(f"{name}: {value:.6f}" if isinstance(value, (int, float)) else f"{name}: {value}")
    return "\n".join(lines) + "\n"


def _staged_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_metrics_report(metrics: Mapping[str, Any], directory: Path, prefixes: Sequence[str] = ("",)) -> None:
    """``metrics.json`` and ``metrics_summary.txt`` as the seed's ``save_metrics_report``."""
    directory.mkdir(parents=True, exist_ok=True)
    _staged_text(directory / "metrics.json", json.dumps(dict(metrics), indent=2))
    _staged_text(directory / "metrics_summary.txt", summary_text(metrics, prefixes))


# -- the seed's comparison switches ---------------------------------------------------

@dataclass(frozen=True)
class ComparisonOptions:
    detail: str = "all"            # COMPARISON_METRICS: "basic" or "all"
    statistical_tests: bool = True  # STATISTICAL_TESTS
    plots: bool = True             # COMPARISON_PLOTS

    def __post_init__(self) -> None:
        if self.detail not in COMPARISON_DETAIL:
            raise UsageError(f"COMPARISON_METRICS must be one of {', '.join(COMPARISON_DETAIL)}, got {self.detail!r}")


@dataclass(frozen=True)
class ComparisonFlags:
    """The command line's comparison flags; None: not given (the variable decides)."""
    previous_score_field: str | None = None
    mode: str | None = None
    detail: str | None = None
    statistical_tests: str | None = None
    plots: str | None = None


def _setting(flag: str | None, environ: Mapping[str, str], variable: str, default: str) -> tuple[str, str]:
    """(value, where it came from): the flag if given, else a non-empty variable, else the default."""
    if flag is not None:
        return flag, f"--{variable.lower().replace('_', '-')}"
    value = environ.get(variable, "").strip()
    return (value, variable) if value else (default, variable)


def _switch(flag: str | None, environ: Mapping[str, str], variable: str, default: str) -> bool:
    value, source = _setting(flag, environ, variable, default)
    if value.lower() not in ("true", "false"):
        raise UsageError(f"{source} must be true or false, got {value!r}")
    return value.lower() == "true"


def comparison_switches(flags: ComparisonFlags, environ: Mapping[str, str]) -> tuple[str | None, ComparisonOptions]:
    """(the previous model's score column, or None for no comparison; the options).

    As the seed: comparison runs when ``COMPARISON_MODE`` is true and ``PREVIOUS_SCORE_FIELD``
    names the column. A ``--previous-score-field`` given on the command line turns comparison
    on by itself unless ``--comparison-mode false`` is given too."""
    column = flags.previous_score_field or environ.get("PREVIOUS_SCORE_FIELD", "").strip() or None
    mode = flags.mode if flags.mode is not None else ("true" if flags.previous_score_field else None)
    if not _switch(mode, environ, "COMPARISON_MODE", "false"):
        column = None
    elif column is None:
        raise UsageError("COMPARISON_MODE is true but no previous model's score column is named: set "
                         "PREVIOUS_SCORE_FIELD or give --previous-score-field")
    detail, source = _setting(flags.detail, environ, "COMPARISON_METRICS", "all")
    if detail.lower() not in COMPARISON_DETAIL:
        raise UsageError(f"{source} must be one of {', '.join(COMPARISON_DETAIL)}, got {detail!r}")
    options = ComparisonOptions(detail.lower(), _switch(flags.statistical_tests, environ, "STATISTICAL_TESTS", "true"),
                                _switch(flags.plots, environ, "COMPARISON_PLOTS", "true"))
    return column, options
