"""Plots of one task's scores: ROC and PR curves, score distributions per class,
reliability diagrams with per-bin counts, and the comparison scatter and distributions.
The file's suffix picks the format (PNG, or seed 002's JPG).

Binary tasks draw the class-1 score of each series (raw, calibrated, a previous
model) on one axis; multiclass tasks draw one-vs-rest curves per class, one panel
per series. Matplotlib runs headless (Agg).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as sk

from tce.lib.calibration_metrics import calibration_error, confidence_and_hits, reliability_bins


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class TaskScores:
    task: str
    classes: tuple[str, ...]
    labels: np.ndarray                                   # class indices
    series: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [records, classes]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def _curves(scores: TaskScores, path: Path, kind: str) -> Path:
    """ROC (``kind`` "roc") or precision-recall ("pr") curves."""
    plt = _pyplot()
    panels = [None] if scores.binary else list(scores.series)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        lines = ([(name, scores.labels == 1, probabilities[:, 1]) for name, probabilities in scores.series.items()]
                 if panel is None else
                 [(f"class {i} ({name})", scores.labels == i, scores.series[panel][:, i])
                  for i, name in enumerate(scores.classes)])
        for name, truth, score in lines:
            if truth.all() or not truth.any():
                continue  # a curve needs both outcomes
            if kind == "roc":
                x, y, _ = sk.roc_curve(truth, score)
                area = sk.auc(x, y)
            else:
                y, x, _ = sk.precision_recall_curve(truth, score)
                area = sk.average_precision_score(truth, score)
            axis.plot(x, y, label=f"{name} ({'AUC' if kind == 'roc' else 'AP'} {area:.3f})")
        if kind == "roc":
            axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axis.set_xlabel("false positive rate" if kind == "roc" else "recall")
        axis.set_ylabel("true positive rate" if kind == "roc" else "precision")
        axis.set_title(f"{'ROC' if kind == 'roc' else 'precision-recall'}: {scores.task}"
                       + ("" if panel is None else f" ({panel}, one vs rest)"))
        axis.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    return _save(figure, path)


def roc_curves(scores: TaskScores, path: Path) -> Path:
    return _curves(scores, path, "roc")


def pr_curves(scores: TaskScores, path: Path) -> Path:
    return _curves(scores, path, "pr")


def panel_title(scores: TaskScores, column: int) -> str:
    """One title per panel: the task, and for a multiclass task the class the panel shows."""
    return f"scores: {scores.task}" if scores.binary else f"scores of class {scores.classes[column]}: {scores.task}"


def sparse_bins(counts: np.ndarray) -> np.ndarray:
    """Bins too thin to trust (fewer than 1% of the records, and fewer than 20): their
    observed frequency swings between 0 and 1 on a handful of records."""
    return (counts > 0) & (counts < max(20.0, 0.01 * float(counts.sum())))


def score_distributions(scores: TaskScores, path: Path) -> Path:
    """Per class: its score over the records of that class and over the others,
    calibrated filled, raw outlined."""
    plt = _pyplot()
    shown = [1] if scores.binary else list(range(len(scores.classes)))
    figure, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for axis, i in zip(axes[0], shown, strict=True):
        for member, colour in ((True, "tab:red"), (False, "tab:blue")):
            rows = (scores.labels == i) == member
            who = f"class {scores.classes[i]}" if member else "other classes"
            if "calibrated" in scores.series:
                axis.hist(scores.series["calibrated"][rows, i], bins=bins, alpha=0.45, color=colour,
                          label=f"{who}, calibrated ({int(rows.sum())})")
            if "raw" in scores.series:
                axis.hist(scores.series["raw"][rows, i], bins=bins, histtype="step", color=colour, linestyle="--",
                          label=f"{who}, raw")
        axis.set_xlabel(f"score of class {scores.classes[i]}")
        axis.set_ylabel("records")
        axis.set_title(panel_title(scores, i))
        axis.legend(fontsize=7)
    return _save(figure, path)


def reliability_diagram(scores: TaskScores, path: Path, bins: int = 15) -> Path:
    """Observed frequency against confidence per bin (top), records per bin (bottom)."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 7), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1.3]})
    top.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    width = 1 / bins / (len(scores.series) + 1)
    for offset, (name, probabilities) in enumerate(scores.series.items()):
        mean_conf, frequency, counts = reliability_bins(*confidence_and_hits(probabilities, scores.labels), bins)
        used, thin = counts > 0, sparse_bins(counts)
        ece, _ = calibration_error(probabilities, scores.labels, bins)
        # A point's area follows its bin's records; a thin bin is hollow: its frequency is noise.
        sizes = 12 + 140 * counts / max(float(counts.max()), 1.0)
        line, = top.plot(mean_conf[used], frequency[used], "-", linewidth=1, alpha=0.6, label=f"{name} (ECE {ece:.3f})")
        solid = used & ~thin
        top.scatter(mean_conf[solid], frequency[solid], s=sizes[solid], color=line.get_color(), zorder=3)
        top.scatter(mean_conf[thin], frequency[thin], s=sizes[thin], facecolors="none", edgecolors=line.get_color(),
                    zorder=3)
        bars = bottom.bar(edges[:-1] + (offset + 0.5) * width, counts, width=width, align="edge", label=name)
        bottom.bar_label(bars, labels=[f"{int(c)}" if c else "" for c in counts], fontsize=6, rotation=90,
                         padding=1)
    top.set_ylabel("observed frequency")
    top.set_title(f"reliability: {scores.task}\npoint area: records in the bin; hollow: too few to trust",
                  fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.set_xlabel("class-1 probability" if scores.binary else "top-class confidence")
    bottom.set_ylabel("records per bin")
    bottom.set_xlim(0, 1)
    bottom.margins(y=0.25)
    return _save(figure, path)


def comparison_scatter(task: str, labels: np.ndarray, new: np.ndarray, previous: np.ndarray, path: Path,
                       kind: str = "calibrated") -> Path:
    """The new model's class-1 score (``kind``: which one) against the previous model's,
    coloured by label."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for value, colour in ((0, "tab:blue"), (1, "tab:red")):
        rows = labels == value
        axis.scatter(previous[rows], new[rows], s=4, alpha=0.4, color=colour, label=f"label {value}")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set_xlabel("previous model's score")
    axis.set_ylabel(f"new model's score ({kind})")
    axis.set_title(f"new vs previous: {task}")
    axis.legend(fontsize=8)
    return _save(figure, path)


def comparison_distributions(task: str, labels: np.ndarray, new: np.ndarray, previous: np.ndarray,
                             path: Path) -> Path:
    """Seed 002's comparison distributions: both models' class-1 scores by label (left),
    and the score differences new - previous by label (right)."""
    plt = _pyplot()
    figure, (scores, differences) = plt.subplots(1, 2, figsize=(11, 4.5))
    bins = np.linspace(0, 1, 41)
    spread = max(float(np.max(np.abs(new - previous))), 1e-6)
    for value, colour in ((0, "tab:blue"), (1, "tab:red")):
        rows = labels == value
        scores.hist(new[rows], bins=bins, alpha=0.45, color=colour, label=f"new, label {value} ({int(rows.sum())})")
        scores.hist(previous[rows], bins=bins, histtype="step", linestyle="--", color=colour,
                    label=f"previous, label {value}")
        differences.hist(new[rows] - previous[rows], bins=np.linspace(-spread, spread, 41), alpha=0.5, color=colour,
                         label=f"label {value}")
    differences.axvline(0, color="k", linestyle=":", linewidth=0.8)
    scores.set_xlabel("class-1 score (new: raw)")
    differences.set_xlabel("new - previous")
    for axis, title in ((scores, "scores by label"), (differences, "score differences by label")):
        axis.set_ylabel("records")
        axis.set_title(f"{title}: {task}")
        axis.legend(fontsize=7)
    return _save(figure, path)


def calibration_over_time(task: str, windows: list[str], records: list[int], ece: dict[str, list[float]],
                          path: Path) -> Path:
    """ECE per time window for each score kind (top; NaN: not measured) and the labelled
    records of each window (bottom)."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.5 * len(windows) + 3), 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1.2]})
    x = np.arange(len(windows))
    for (kind, values), style in zip(ece.items(), ("o-", "s--", "^:"), strict=False):
        if not np.all(np.isnan(np.asarray(values, dtype=np.float64))):
            top.plot(x, values, style, label=f"{kind} ECE")
    top.set_ylabel("ECE")
    top.set_ylim(bottom=0)
    top.set_title(f"calibration over time: {task}", fontsize=10)
    top.legend(fontsize=8)
    bottom.bar(x, records, color="tab:gray")
    bottom.set_ylabel("labelled records")
    bottom.set_xticks(x, windows, rotation=45, ha="right", fontsize=8)
    return _save(figure, path)
