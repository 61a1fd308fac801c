"""``tce predict``: score a CSV/TSV/Parquet file on a running server."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from tce.jobs.tables import read_frame, write_frame
from tce_backends.errors import UsageError
from tce_client import (
    DEFAULT_MODEL,
    CalibratedClassifierClient,
    UnusedColumnsWarning,
    predictions_to_frame,
    to_seed_csv,
    to_seed_json,
)

FORMATS = ("table", "seed-json", "seed-csv")


@dataclass(frozen=True)
class PredictJob:
    input: Path
    output: Path
    url: str | None = None
    protocol: str = "http"
    model: str = DEFAULT_MODEL
    format: str = "table"
    task: str | None = None          # seed formats: the task to format
    id_field: str | None = None      # table: keep only this input column
    allow_missing_columns: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"format must be one of {list(FORMATS)}, got {self.format!r}")


def _check_task(job: PredictJob, tasks: list[str]) -> None:
    if job.format == "table":
        return
    if job.task is None and len(tasks) > 1:
        raise UsageError(f"--format {job.format} formats one task: add --task (one of {', '.join(tasks)})")
    if job.task is not None and job.task not in tasks:
        raise UsageError(f"--task {job.task!r} is not served; tasks: {', '.join(tasks)}")


def run_predict(job: PredictJob, note: Callable[[str], None] = print) -> int:
    """Score every row of ``job.input``; returns the number of predictions written.
    Everything the file or options get wrong is found before anything is scored."""
    frame = read_frame(job.input)
    if job.id_field and job.id_field not in frame:
        raise UsageError(f"--id-field {job.id_field!r} is not a column of {job.input}")
    with CalibratedClassifierClient(job.url, protocol=job.protocol, model=job.model) as client:
        _check_task(job, [t.name for t in client.schema.tasks])
        with warnings.catch_warnings(record=True) as unused:
            warnings.simplefilter("always", UnusedColumnsWarning)
            predictions = client.predict(frame.drop(columns=[job.id_field]) if job.id_field else frame,
                                         allow_missing_fields=job.allow_missing_columns)
        for warning in unused:
            note(f"note: {warning.message}")
    if job.format == "table":
        keep = frame[[job.id_field]] if job.id_field else frame
        write_frame(pd.concat([keep.reset_index(drop=True), predictions_to_frame(predictions)], axis=1), job.output)
    else:
        text = (to_seed_json if job.format == "seed-json" else to_seed_csv)(predictions, job.task)
        job.output.write_text(text, encoding="utf-8")
    return len(predictions)
