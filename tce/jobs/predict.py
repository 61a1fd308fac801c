"""``tce predict``: seed 001's batch inference job, run through a served ensemble.

Input: a CSV/TSV/Parquet file or a directory of them (one table, in file-name order).
Output: a directory with ``inference_predictions.<fmt>``, ``_SUCCESS`` and
``_HEALTH``, the markers written only once the predictions are complete.

A record that cannot be scored as given (text that is not UTF-8, a number that does
not parse, ...) does not fail the job: it is left out of the predictions and listed in
``inference_rejects.<fmt>`` (its ID, file, row, field and reason). Past ``max_rejects``
the job fails with that list written and no marker (``tce.lib.rejects``).

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
import dataclasses
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from tce.lib.parts import JobDirectory, RejectsOutput, Render
from tce.lib.progress import Progress
from tce.lib.rejects import Reject, RejectLimit, rejects_name, rejects_table
from tce.lib.tables import EXTENSIONS, TableSource, Undecodable, read_frame, write_table_text
from tce_backends.errors import TceError, UsageError
from tce_client import DEFAULT_MODEL, AsyncCalibratedClassifierClient, ClientError, RecordError
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

log = logging.getLogger(__name__)


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
    task: str | None = None           # the one task written (as a one-task model's columns; seed formats: theirs)
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
    batch_size: int | None = None     # records per request (None: the server's largest batch; never above it)
    max_rejects: RejectLimit = RejectLimit()  # records that cannot be scored: left out and listed, up to this
    id_field_option: str = "--id-field"  # how the user named the ID column (or ID_FIELD), for messages

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise UsageError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.protocol not in ("http", "grpc"):
            raise UsageError(f"protocol must be 'http' or 'grpc', got {self.protocol!r}")
        if self.chunk_rows < 1:
            raise UsageError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")
        if self.max_in_flight < 1:
            raise UsageError(f"--max-in-flight must be >= 1, got {self.max_in_flight}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise UsageError(f"--shard takes I/N with 0 <= I < N, got {self.shard[0]}/{self.shard[1]}")
        if self.format in SEED_FORMATS and (self.keep_columns or self.id_field or self.keep):
            raise UsageError(f"--format {self.format} writes seed 000's score fields only: drop --id-field and "
                             "--keep-columns, or use csv, tsv or parquet")


@dataclass(frozen=True)
class PredictResult:
    path: Path | None  # None: a shard whose output waits for the other shards
    rows: int | None   # rows in the output, rejects not counted (None: a finished CSV job found again)
    scored: int        # rows this run scored (the rest were done by an earlier run)
    seconds: float
    finished_before: bool = False  # an earlier run of the same job had finished: nothing was done
    rejected: int = 0              # records left out of the output, listed in ``rejects_path``
    rejects_path: Path | None = None

    @property
    def records_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


def kept_columns(job: PredictJob, columns: list[str]) -> list[str]:
    """Input columns copied to the output, in input order; each named one must exist."""
    named = [c for c in (job.id_field, *job.keep) if c]
    for name in named:
        if name not in columns:
            option = job.id_field_option if name == job.id_field else "column"
            raise UsageError(f"{option} {name!r} is not a column of the input (columns: {', '.join(columns)})")
    if job.keep_columns:
        return list(columns)
    return [c for c in columns if c in named]


def output_name(job: PredictJob, input_format: str) -> str:
    kind = job.format or input_format
    suffix = {"seed-json": ".json", "seed-csv": ".csv"}.get(kind) or EXTENSIONS[kind]
    return job.output_stem + suffix


def rejects_kind(job: PredictJob, input_format: str) -> str:
    """The rejects file's format: the output's table format (CSV beside seed formats)."""
    kind = job.format or input_format
    return kind if kind in TABLE_FORMATS else "csv"


def rejects_file_name(job: PredictJob, input_format: str) -> str:
    return rejects_name(job.output_stem) + EXTENSIONS[rejects_kind(job, input_format)]


def _check_task(job: PredictJob, schema: EnsembleSchema) -> None:
    tasks = [t.name for t in schema.tasks]
    if job.task is not None and job.task not in tasks:
        raise UsageError(f"--task {job.task!r} is not served; tasks: {', '.join(tasks)}")
    if job.format in SEED_FORMATS and job.task is None and len(tasks) > 1:
        raise UsageError(f"--format {job.format} formats one task: add --task (one of {', '.join(tasks)})")


def _one_task(schema: EnsembleSchema, task: str | None) -> tuple[EnsembleSchema, int | None]:
    """The schema whose columns a table output holds: with ``task``, that task alone, so its
    columns are named as a one-task model's (seed 001's ``prob_class_<i>``); and its index."""
    if task is None or len(schema.tasks) == 1:
        return schema, None
    index = next(i for i, t in enumerate(schema.tasks) if t.name == task)
    return dataclasses.replace(schema, tasks=(schema.tasks[index],)), index


def _prediction_columns(schema: EnsembleSchema, outputs: dict[str, np.ndarray], task: str | None
                        ) -> dict[str, np.ndarray]:
    written, index = _one_task(schema, task)
    if index is not None:  # the chosen task's calibration-fallback flag only
        fallback = schema.outputs["calibration_fallback"]
        outputs = {**outputs, fallback: outputs[fallback][:, index:index + 1]}
    return output_columns(written, outputs)


def run_predict(job: PredictJob, note: Callable[[str], None] | None = None) -> PredictResult:
    """``note``: where the job's notes go (if not given: this module's logger)."""
    """Score every input row into ``job.output``. The input's columns, the named
    columns and the options are checked before anything is scored."""
    source = TableSource(job.input)
    kept = kept_columns(job, source.columns)
    runner = _Runner(job, source, kept, note or log.info)
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
        self.task: str | None = None  # table formats: the one task written (--task)
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
            if job.batch_size is not None and job.batch_size > client.max_batch_size:
                self.note(f"note: batch size {job.batch_size} is above the served model's largest batch "
                          f"({client.max_batch_size}); requests carry {client.max_batch_size} records")
            for unused in schema.check_fields(self.model_columns, self.job.allow_missing_columns):
                self.note(f"note: column {unused!r} is not a model input and is not kept; it is left out")
            kind = job.format or self.source.format
            self.task = job.task if kind in TABLE_FORMATS else None  # seed formats pick theirs when rendered
            clash = sorted(set(output_column_names(_one_task(schema, self.task)[0])) & set(self.kept))
            if clash:
                raise UsageError(f"the input already has prediction columns {clash}; drop them, or keep fewer "
                                 "columns (--keep-columns keeps every input column)")
            name = output_name(job, self.source.format)
            rejects_kind_ = rejects_kind(job, self.source.format)
            rejects = RejectsOutput(rejects_file_name(job, self.source.format), _renderer(rejects_kind_, schema, None),
                                    job.max_rejects)
            self.directory = JobDirectory(job.output, self._identity(schema, kind), (name, rejects.name),
                                          restart=job.restart, shard=job.shard)
            if self.directory.finished:
                found = _rejects_found(job.output / rejects.name)
                rows = None if self.source.rows is None else self.source.rows - found.get("rejected", 0)
                return PredictResult(job.output / name, rows, 0, 0.0, finished_before=True, **found)
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
            path = self.directory.finish(count, _renderer(kind, schema, job.task), name, rejects)
        except ClientError as error:
            if isinstance(error, RecordError) or self.directory is None:
                raise
            raise JobStopped(f"{error}; {self.saved_rows()} rows are saved in {job.output}: rerun the same "
                             "command to continue") from None
        finally:
            await client.close()
        found = _rejects_found(job.output / rejects.name) if path is not None else {}
        return PredictResult(path, rows - found.get("rejected", 0), scored, time.monotonic() - started, **found)

    async def _score_chunks(self, client: AsyncCalibratedClassifierClient, schema: EnsembleSchema
                            ) -> tuple[int, int, int]:
        """Score the chunks not yet saved; returns (chunks, rows, rows scored now)."""
        assert self.directory is not None
        total = self.source.rows if self.job.shard is None else None  # a shard scores part of it
        progress = Progress(total, "predict", interval_s=self.job.progress_interval_s)
        chunks = self.source.checked_chunks(self.job.chunk_rows)
        window: deque[tuple[int, int, asyncio.Task]] = deque()
        index, offset = -1, 0
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                table, undecodable = chunk
                index += 1
                if not self.directory.mine(index):
                    pass  # another shard's chunk
                elif self.directory.done(index, offset, table.num_rows):
                    progress.skip(table.num_rows)
                else:
                    window.append((index, offset, asyncio.create_task(
                        self._score(client, schema, table, undecodable, offset, progress))))
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
        table, rejects, rows = await task
        window.popleft()
        self.directory.write(index, table, start, rows=rows, rejects=rejects)

    def _encode(self, schema: EnsembleSchema, table: pa.Table, undecodable: list[Undecodable], offset: int
                ) -> tuple[dict[str, np.ndarray] | None, np.ndarray, list[Reject]]:
        """The chunk's input arrays for the records that can be scored, their rows in the
        chunk, and the records that cannot (their first problem, in row order)."""
        used = {*schema.input_fields, *self.kept}  # a bad value elsewhere is never read: not a reject
        bad: dict[int, Reject] = {}
        for cell in undecodable:
            if cell.column in used:
                bad.setdefault(cell.row - offset, Reject(cell.row, cell.column, cell.reason))
        readable = np.setdiff1d(np.arange(table.num_rows), np.fromiter(bad, dtype=np.int64, count=len(bad)))
        inputs = None
        if readable.size:
            frame = (table.take(readable) if bad else table).select(self.model_columns).to_pandas()
            # unused columns are noted once, before the first chunk
            inputs, problems = schema.encode_valid(frame, allow_missing_fields=self.job.allow_missing_columns,
                                                   warn_unused=False)
            for problem in problems:
                row = int(readable[problem.index])
                bad[row] = Reject(offset + row, problem.field, problem.problem)
        scored = np.setdiff1d(readable, np.fromiter(bad, dtype=np.int64, count=len(bad)))
        return inputs, scored, [bad[row] for row in sorted(bad)]

    def _rejects(self, table: pa.Table, rejects: list[Reject], offset: int) -> pa.Table | None:
        if not rejects:
            return None
        ids = table.column(self.job.id_field).take([r.row - offset for r in rejects]) if self.job.id_field else None
        return rejects_table(rejects, ids, self.job.id_field, self.source.locate)

    def _request_size(self, client: AsyncCalibratedClassifierClient) -> int:
        """Records per request: the job's batch size, never above the server's largest batch."""
        return min(self.job.batch_size or client.max_batch_size, client.max_batch_size)

    async def _score(self, client: AsyncCalibratedClassifierClient, schema: EnsembleSchema, table: pa.Table,
                     undecodable: list[Undecodable], offset: int, progress: Progress
                     ) -> tuple[pa.Table, pa.Table | None, int]:
        """(the chunk's kept columns and predictions, its rejected records, its input rows)."""
        inputs, scored, rejected = await asyncio.to_thread(self._encode, schema, table, undecodable, offset)
        progress.skip(len(rejected))
        rejects = self._rejects(table, rejected, offset)
        if inputs is None or scored.size == 0:  # every record of the chunk was rejected
            return table.select(self.kept).slice(0, 0), rejects, table.num_rows

        async def one(part: slice) -> dict[str, np.ndarray]:
            outputs = await client.infer_outputs_adaptive(inputs, part)  # as many in flight as the server takes
            progress.update(part.stop - part.start)
            return outputs

        requests = [asyncio.create_task(one(part)) for part in batch_slices(scored.size, self._request_size(client))]
        try:
            parts = await asyncio.gather(*requests)
        except BaseException:
            await _cancel(requests)
            raise
        outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        predictions = _prediction_columns(schema, outputs, self.task)
        rows = table if scored.size == table.num_rows else table.take(scored)
        kept = [rows.column(c) for c in self.kept]
        return (pa.table([*kept, *(pa.array(v) for v in predictions.values())], names=[*self.kept, *predictions]),
                rejects, table.num_rows)


def _rejects_found(path: Path) -> dict:
    """PredictResult's rejected/rejects_path from a finished job's rejects file (small: within the limit)."""
    return {"rejected": len(read_frame(path)), "rejects_path": path} if path.is_file() else {}


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

    writer, first = None, None
    try:
        for part in parts:
            first = part if first is None else first
            if part.num_rows:  # a chunk whose every record was rejected has no prediction columns
                writer = writer or pq.ParquetWriter(target, part.schema)
                writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pq.write_table(first if first is not None else pa.table({}), target)


def _render_text(parts: Iterator[pa.Table], target: Path, kind: str) -> None:
    with open(target, "w", encoding="utf-8", newline="") as handle:
        first, header = None, True
        for part in parts:
            first = part if first is None else first
            if part.num_rows:  # a chunk whose every record was rejected has no prediction columns
                write_table_text(part, handle, kind, header=header)
                header = False
        if header and first is not None:
            write_table_text(first, handle, kind, header=True)


def _matrix(part: pa.Table, columns: list[str]) -> np.ndarray:
    return np.column_stack([part.column(c).to_numpy() for c in columns])


def _render_seed(parts: Iterator[pa.Table], target: Path, kind: str, raw: list[str], calibrated: list[str]) -> None:
    """Seed 000's records: ``{"predictions": [...]}`` (as ``to_seed_json``) or CSV
    with the same field names (as ``to_seed_csv``), written record by record."""
    records = (seed_fields(raw_row, calibrated_row) for part in parts if part.num_rows
               for raw_row, calibrated_row in zip(_matrix(part, raw), _matrix(part, calibrated), strict=True))
    with open(target, "w", encoding="utf-8", newline="") as handle:
        if kind == "seed-json":
            handle.write('{"predictions": [')
            for index, record in enumerate(records):
                handle.write((", " if index else "") + json.dumps(record))
            handle.write("]}")
            return
        first = next(records, None)
        if first is None:  # every record was rejected (and the limit allowed it)
            return
        writer = csv.DictWriter(handle, fieldnames=list(first), lineterminator="\n")
        writer.writeheader()
        writer.writerow(first)
        writer.writerows(records)
