"""``tce predict``: seed 001's batch inference job, run through a served ensemble.

Input: a CSV/TSV/Parquet file or a directory of them (one table, in file-name order).
Output: a directory with ``inference_predictions.<fmt>``, ``_SUCCESS`` and
``_HEALTH``, the markers written only once the predictions are complete.

The input is read and scored in chunks of ``chunk_rows`` rows, so memory stays flat
however long the file; each chunk's rows go out as many requests at once through the
asyncio client, as many at a time as the server takes (at most ``max_in_flight``; fewer,
and said so, while it refuses requests for load: ``tce_client.concurrency``), and the
next chunk is read and encoded while one is being scored. Every finished chunk is saved
(``tce.lib.parts``): after a crash, a dead server or Ctrl-C, the same command continues
where the job stopped, and the output still holds every input row once, in input order.
"""
from __future__ import annotations

import asyncio
import csv
import json
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from tce.lib.parts import JobDirectory, Render
from tce.lib.progress import Progress
from tce.lib.tables import EXTENSIONS, TableSource, write_table_text
from tce_backends.errors import TceError, UsageError
from tce_client import DEFAULT_MODEL, AsyncCalibratedClassifierClient, ClientError, RecordError, UnusedColumnsWarning
from tce_client.client import batch_slices
from tce_client.columns import probability_columns
from tce_client.results import output_column_names, output_columns
from tce_client.schema import EnsembleSchema
from tce_client.seed_format import seed_fields

TABLE_FORMATS = ("csv", "tsv", "parquet")
SEED_FORMATS = ("seed-json", "seed-csv")
FORMATS = (*TABLE_FORMATS, *SEED_FORMATS)
OUTPUT_STEM = "inference_predictions"
CHUNKS_IN_FLIGHT = 2  # the next chunk is read and encoded while the current one is scored


class JobStopped(TceError):
    """The job stopped before its end; what it finished is kept for a rerun."""


@dataclass(frozen=True)
class PredictJob:
    input: Path
    output: Path                      # a directory
    url: str | None = None
    protocol: str = "grpc"
    model: str = DEFAULT_MODEL
    format: str | None = None         # None: the (first) input file's format
    task: str | None = None           # seed formats: the task to format
    id_field: str | None = None       # kept beside the predictions
    keep_columns: bool = False        # keep every input column
    keep: tuple[str, ...] = ()        # further input columns to keep (evaluate: labels, a previous score)
    allow_missing_columns: bool = False
    chunk_rows: int = 1024
    max_in_flight: int = 8
    restart: bool = False
    output_stem: str = OUTPUT_STEM
    progress_interval_s: float = 10.0
    shard: tuple[int, int] | None = None  # (i, n): score only the i-th of n disjoint parts (chunks i, i+n, ...)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise UsageError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.protocol not in ("http", "grpc"):
            raise UsageError(f"protocol must be 'http' or 'grpc', got {self.protocol!r}")
        if self.chunk_rows < 1:
            raise UsageError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")
        if self.max_in_flight < 1:
            raise UsageError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise UsageError(f"--shard takes I/N with 0 <= I < N, got {self.shard[0]}/{self.shard[1]}")
        if self.format in SEED_FORMATS and (self.keep_columns or self.id_field or self.keep):
            raise UsageError(f"--format {self.format} writes seed 000's score fields only: drop --id-field and "
                             "--keep-columns, or use csv, tsv or parquet")


@dataclass(frozen=True)
class PredictResult:
    path: Path | None  # None: a shard whose output waits for the other shards
    rows: int | None   # rows in the output (None: a finished CSV job found again, not counted)
    scored: int        # rows this run scored (the rest were done by an earlier run)
    seconds: float
    finished_before: bool = False  # an earlier run of the same job had finished: nothing was done

    @property
    def records_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def kept_columns(job: PredictJob, columns: list[str]) -> list[str]:
    """Input columns copied to the output, in input order; each named one must exist."""
    named = [c for c in (job.id_field, *job.keep) if c]
    for name in named:
        if name not in columns:
            option = "--id-field" if name == job.id_field else "column"
            raise UsageError(f"{option} {name!r} is not a column of the input (columns: {', '.join(columns)})")
    if job.keep_columns:
        return list(columns)
    return [c for c in columns if c in named]


def output_name(job: PredictJob, input_format: str) -> str:
    kind = job.format or input_format
    suffix = {"seed-json": ".json", "seed-csv": ".csv"}.get(kind) or EXTENSIONS[kind]
    return job.output_stem + suffix


def _check_task(job: PredictJob, schema: EnsembleSchema) -> None:
    if job.format not in SEED_FORMATS:
        return
    tasks = [t.name for t in schema.tasks]
    if job.task is None and len(tasks) > 1:
        raise UsageError(f"--format {job.format} formats one task: add --task (one of {', '.join(tasks)})")
    if job.task is not None and job.task not in tasks:
        raise UsageError(f"--task {job.task!r} is not served; tasks: {', '.join(tasks)}")


def run_predict(job: PredictJob, note: Callable[[str], None] = print) -> PredictResult:
    """Score every input row into ``job.output``. The input's columns, the named
    columns and the options are checked before anything is scored."""
    source = TableSource(job.input)
    kept = kept_columns(job, source.columns)
    runner = _Runner(job, source, kept, note)
    try:
        return asyncio.run(runner.run())
    except KeyboardInterrupt:
        raise JobStopped(f"interrupted; {runner.saved_rows()} rows are saved in {job.output}: rerun the same "
                         "command to continue") from None


class _Runner:
    def __init__(self, job: PredictJob, source: TableSource, kept: list[str], note: Callable[[str], None]) -> None:
        self.job, self.source, self.kept, self.note = job, source, kept, note
        # Columns named to be kept are not the model's; with --keep-columns the rest are kept *and* scored.
        self.model_columns = [c for c in source.columns if c not in (job.id_field, *job.keep)]
        self.directory: JobDirectory | None = None
        self._last_slowdown_note = -1e9

    def _concurrency_changed(self, old: int, new: int) -> None:
        """Say when the job slows down for a busy server (at most every 10 s), and when it is back."""
        now = time.monotonic()
        if new < old and now - self._last_slowdown_note >= 10.0:
            self._last_slowdown_note = now
            self.note(f"note: the server is busy and refused requests; {new} request(s) in flight now "
                      f"(of at most {self.job.max_in_flight}); refused ones are sent again")

    def saved_rows(self) -> int:
        return self.directory.rows_done() if self.directory is not None else 0

    def _identity(self, schema: EnsembleSchema, kind: str) -> dict:
        """What a rerun must share with the run it continues; keys name what the user changed."""
        return {"input files": self.source.identity(), "input columns": self.source.columns,
                "kept columns (--id-field, --keep-columns)": self.kept, "--chunk-rows": self.job.chunk_rows,
                "--format": kind, "--task": self.job.task, "--model": self.job.model,
                "--allow-missing-columns": self.job.allow_missing_columns,
                "--shard (parts)": self.job.shard[1] if self.job.shard else None,
                "served tasks": [[t.name, list(t.classes)] for t in schema.tasks]}

    async def run(self) -> PredictResult:
        job = self.job
        started = time.monotonic()
        client = AsyncCalibratedClassifierClient(job.url, protocol=job.protocol, model=job.model,  # type: ignore
                                                 max_concurrency=job.max_in_flight,
                                                 on_concurrency_change=self._concurrency_changed)
        try:
            await client.connect()
            assert client.schema is not None
            schema = client.schema
            _check_task(job, schema)
            for unused in schema.check_fields(self.model_columns, self.job.allow_missing_columns):
                self.note(f"note: column {unused!r} is not a model input and is not kept; it is left out")
            clash = sorted(set(output_column_names(schema)) & set(self.kept))
            if clash:
                raise UsageError(f"the input already has prediction columns {clash}; drop them, or keep fewer "
                                 "columns (--keep-columns keeps every input column)")
            kind = job.format or self.source.format
            name = output_name(job, self.source.format)
            self.directory = JobDirectory(job.output, self._identity(schema, kind), (name,), restart=job.restart,
                                          shard=job.shard)
            if self.directory.finished:
                return PredictResult(job.output / name, self.source.rows, 0, 0.0, finished_before=True)
            count, rows, scored = await self._score_chunks(client, schema)
            if rows == 0:
                raise UsageError(f"{job.input} holds no records")
            bad = self.directory.bad_parts(count)
            if bad:  # changed on disk while the job ran: score those chunks again
                self.note(f"note: {len(bad)} saved chunk(s) did not match their record ({bad[:5]}); scoring "
                          "them again")
                count, rows, again = await self._score_chunks(client, schema)
                scored += again
                if self.directory.bad_parts(count):
                    raise UsageError(f"saved chunks in {job.output} keep changing while the job runs; is another "
                                     "job writing there?")
            path = self.directory.finish(count, _renderer(kind, schema, job.task), name)
        except ClientError as error:
            if isinstance(error, RecordError) or self.directory is None:
                raise
            raise JobStopped(f"{error}; {self.saved_rows()} rows are saved in {job.output}: rerun the same "
                             "command to continue") from None
        finally:
            await client.close()
        return PredictResult(path, rows, scored, time.monotonic() - started)

    async def _score_chunks(self, client: AsyncCalibratedClassifierClient, schema: EnsembleSchema
                            ) -> tuple[int, int, int]:
        """Score the chunks not yet saved; returns (chunks, rows, rows scored now)."""
        assert self.directory is not None
        total = self.source.rows if self.job.shard is None else None  # a shard scores part of it
        progress = Progress(total, "predict", interval_s=self.job.progress_interval_s)
        chunks = self.source.chunks(self.job.chunk_rows)
        window: deque[tuple[int, asyncio.Task]] = deque()
        index, offset = -1, 0
        try:
            while (table := await asyncio.to_thread(next, chunks, None)) is not None:
                index += 1
                if not self.directory.mine(index):
                    pass  # another shard's chunk
                elif self.directory.done(index, offset, table.num_rows):
                    progress.skip(table.num_rows)
                else:
                    window.append((index, offset, asyncio.create_task(
                        self._score(client, schema, table, offset, progress))))
                offset += table.num_rows
                while len(window) >= CHUNKS_IN_FLIGHT:
                    await self._save(window)
            while window:
                await self._save(window)
        except BaseException:
            await _cancel([task for _, _, task in window])
            raise
        finally:
            progress.close()
        return index + 1, offset, progress.scored

    async def _save(self, window: deque) -> None:
        assert self.directory is not None
        index, start, task = window[0]
        table = await task
        window.popleft()
        self.directory.write(index, table, start)

    def _encode(self, schema: EnsembleSchema, table: pa.Table, offset: int) -> dict[str, np.ndarray]:
        frame = table.select(self.model_columns).to_pandas()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedColumnsWarning)  # noted once, before the first chunk
            try:
                return schema.encode(frame, allow_missing_fields=self.job.allow_missing_columns)
            except RecordError as error:
                if error.index is None:
                    raise
                raise RecordError(None, error.field, f"{error.problem} ({self.source.where(offset + error.index)})"
                                  ) from None

    async def _score(self, client: AsyncCalibratedClassifierClient, schema: EnsembleSchema, table: pa.Table,
                     offset: int, progress: Progress) -> pa.Table:
        inputs = await asyncio.to_thread(self._encode, schema, table, offset)
        rows = table.num_rows

        async def one(part: slice) -> dict[str, np.ndarray]:
            outputs = await client.infer_outputs_adaptive(inputs, part)  # as many in flight as the server takes
            progress.update(part.stop - part.start)
            return outputs

        requests = [asyncio.create_task(one(part)) for part in batch_slices(rows, client.max_batch_size)]
        try:
            parts = await asyncio.gather(*requests)
        except BaseException:
            await _cancel(requests)
            raise
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        predictions = output_columns(schema, outputs)
        kept = [table.column(c) for c in self.kept]
        return pa.table([*kept, *(pa.array(v) for v in predictions.values())], names=[*self.kept, *predictions])


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- output formats ------------------------------------------------------------------

def _renderer(kind: str, schema: EnsembleSchema, task: str | None) -> Render:
    if kind in TABLE_FORMATS:
        return _render_parquet if kind == "parquet" else lambda parts, target: _render_text(parts, target, kind)
    info = next(t for t in schema.tasks if task in (None, t.name))
    single = len(schema.tasks) == 1
    raw = probability_columns(info.name, len(info.classes), single)
    calibrated = probability_columns(info.name, len(info.classes), single, calibrated=True)
    return lambda parts, target: _render_seed(parts, target, kind, raw, calibrated)


def _render_parquet(parts: Iterator[pa.Table], target: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for part in parts:
            writer = writer or pq.ParquetWriter(target, part.schema)
            writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()


def _render_text(parts: Iterator[pa.Table], target: Path, kind: str) -> None:
    with open(target, "w", encoding="utf-8", newline="") as handle:
        for index, part in enumerate(parts):
            write_table_text(part, handle, kind, header=index == 0)


def _matrix(part: pa.Table, columns: list[str]) -> np.ndarray:
    return np.column_stack([part.column(c).to_numpy() for c in columns])


def _render_seed(parts: Iterator[pa.Table], target: Path, kind: str, raw: list[str], calibrated: list[str]) -> None:
    """Seed 000's records: ``{"predictions": [...]}`` (as ``to_seed_json``) or CSV
    with the same field names (as ``to_seed_csv``), written record by record."""
    records = (seed_fields(raw_row, calibrated_row) for part in parts
               for raw_row, calibrated_row in zip(_matrix(part, raw), _matrix(part, calibrated), strict=True))
    with open(target, "w", encoding="utf-8", newline="") as handle:
        if kind == "seed-json":
            handle.write('{"predictions": [')
            for index, record in enumerate(records):
                handle.write((", " if index else "") + json.dumps(record))
            handle.write("]}")
            return
        first = next(records)
        writer = csv.DictWriter(handle, fieldnames=list(first), lineterminator="\n")
        writer.writeheader()
        writer.writerow(first)
        writer.writerows(records)
