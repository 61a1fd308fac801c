"""Seed 004's ``test_metrics.json``: where it lies and what it holds, key for key.

``<results>/fold_<fold>/<split>/test_metrics.json`` (the seed's ``outputs/test_results``
tree) holds, in this order: ``checkpoint``, ``model_name``, ``split``, ``fold``, ``metrics``
(``tce.lib.seed_benchmark_metrics``) and a flat ``speed_metrics`` with the seed's eight fields
in its order. Undefined values are the string ``"NaN"``, as the seed writes them. The file is
written aside and renamed into place, so a reader never sees half of it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tce.lib.seed_benchmark_metrics import json_ready
from tce_backends.errors import UsageError

FILE_NAME = "test_metrics.json"
SPLITS = ("val", "test")  # the seed's --split choices
SPEED_FIELDS = ("samples_tested", "avg_time_per_sample_ms", "std_time_per_sample_ms", "min_time_per_sample_ms",
                "max_time_per_sample_ms", "median_time_per_sample_ms", "throughput_samples_per_sec", "device")


@dataclass(frozen=True)
class SeedLayout:
    """Where the seed's file goes and the names it records; ``model_name`` None: the bundle's name."""

    results: Path = Path("artifacts/test_results")
    split: str = "val"
    fold: int = 0
    num_folds: int = 5
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.num_folds < 1 or not 0 <= self.fold < self.num_folds:
            raise UsageError(f"--fold must be in 0..{self.num_folds - 1} (--num_folds {self.num_folds}), "
                             f"got {self.fold}")

    @property
    def path(self) -> Path:
        return Path(self.results) / f"fold_{self.fold}" / self.split / FILE_NAME


def seed_document(layout: SeedLayout, checkpoint: str, model_name: str, metrics: Mapping[str, float],
                          speed_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The seed's document; ``speed_metrics`` may carry more fields, only the seed's are kept."""
    missing = [name for name in SPEED_FIELDS if name not in speed_metrics]
    if missing:
        raise ValueError(f"speed_metrics lacks the seed's fields {missing}")
    return json_ready({"checkpoint": checkpoint, "model_name": layout.model_name or model_name,
                       "split": layout.split, "fold": layout.fold, "metrics": dict(metrics),
                       "speed_metrics": {name: speed_metrics[name] for name in SPEED_FIELDS}})


def write_test_metrics(layout: SeedLayout, document: Mapping[str, Any]) -> Path:
    path = layout.path
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.tmp")
    try:
        aside.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    return path
