"""The prediction log: a sampled record of answered inference requests, for labels that
arrive days later (``tce evaluate --predictions LOG --labels LABELS.csv``).

Every protocol the door serves (KServe v2 over HTTP and gRPC, v1 records, SageMaker's
/invocations) hands its answered request to ``PredictionLog.offer``. That call only draws
the sample and puts references on a bounded queue: a full queue drops the entry and counts
it, so the log never holds a caller up. The worker's writer thread decodes the answers,
turns them into JSON lines and appends them.

One line per record (ensembles built by ``tce build``: their config publishes the schema)::

    {"id": "order-17", "request_id": "order-17", "record": 0, "timestamp": "2026-11-30T09:15:02.123Z",
     "model": "calibrated_ensemble", "release": "1", "calibration_version": "366a572e5b27",
     "tasks": {"abuse": {"raw": {"clean": 0.91, "abusive": 0.09}, "calibrated": {...}, "label": "clean",
               "calibration_fallback": false, "decision": "..."}},
     "id_source": "request", "inputs": {"dialogue": "...", "order_amount": 12.0, ...}}

- ``id``: what labels join on. The caller's request id (the v2/gRPC ``id``, else the
  ``X-Request-Id`` header or gRPC metadata), else one the door makes (``id_source``
  "gateway"), returned to the caller in the ``X-Request-Id`` response header (gRPC: trailing
  metadata). Record ``i`` of a request with several records is ``<request id>/<i>``.
- Scores, labels and versions are those of the answer: an output the caller did not ask
  for is absent from the entry (``decision`` only where the ensemble returns it).
- ``inputs`` (``PredictionLogConfig.inputs``) is the record as a v1 caller would send it.

Files: each door worker appends to its own ``predictions-<worker>.jsonl`` (an exclusive
lock keeps a second gateway out of the same file). Each write is whole lines; a file
passing ``max_file_bytes`` is renamed ``predictions-<worker>-<UTC time>.jsonl`` and never
written again, and only the newest ``keep_files`` of those are kept. A reader reads every
complete line (a write in progress leaves no newline at the end: ``read_lines`` stops
before it); a write the disk cut short is cut back, so no half line stays behind.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tce_client.schema import EnsembleSchema
from tce_gateway.config import PredictionLogConfig
from tce_gateway.http_codec import answer_tensors
from tce_gateway.signatures import ModelSignature
from tce_gateway.tensors import NUMPY_TYPES, InferRequest, InputTensor, unframe_strings
from tce_gateway.upstream import HttpAnswer

PREFIX = "predictions-"
SUFFIX = ".jsonl"
ID_HEADER = "X-Request-Id"
ID_METADATA = "x-request-id"   # gRPC metadata keys are lower case
_WRITE_BATCH = 1000            # entries decoded and written together at most


class PredictionLogError(Exception):
    """The log cannot be written where it was told to (a directory that cannot be made, a
    file another gateway holds)."""


def active_file(directory: Path, worker: str) -> Path:
    return directory / f"{PREFIX}{worker}{SUFFIX}"


def rotated_files(directory: Path, worker: str) -> list[Path]:
    """A worker's finished files, oldest first (their names sort by time)."""
    return sorted(directory.glob(f"{PREFIX}{worker}-*{SUFFIX}"))


def timestamp(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds: 2026-11-30T09:15:02.123Z."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Answered:
    """What ``offer`` keeps of one answered request: references only, decoded later."""

    time_s: float
    request_id: str
    id_source: str              # "request", "header" or "gateway"
    request: InferRequest
    signature: ModelSignature
    answer: HttpAnswer


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _score_rows(values: np.ndarray) -> list[list[float | None]]:
    """Rows of scores as JSON numbers: exact (float32 widened to float64), not finite -> null."""
    wide = values.astype(np.float64).tolist()
    if np.isfinite(values).all():
        return wide
    return [[v if math.isfinite(v) else None for v in row] for row in wide]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _rows(array: np.ndarray | None, records: int) -> np.ndarray | None:
    """``array`` as one row per record, or None when it is absent or not batched like the answer."""
    if array is None or array.ndim == 0 or array.shape[0] != records:
        return None
    return array.reshape(records, -1)


def _scores(array: np.ndarray | None, records: int, classes: int) -> list[list[float | None]] | None:
    rows = _rows(array, records)
    if rows is None or rows.dtype.kind != "f" or rows.shape[1] != classes:  # "classification" answers are text
        return None
    return _score_rows(rows)


def _task_entries(schema: EnsembleSchema, outputs: dict[str, np.ndarray], records: int) -> list[dict[str, Any]]:
    """Per record: each task's scores by class, label, fallback flag and decision, as answered."""
    fallback = _rows(outputs.get(schema.outputs.get("calibration_fallback", "")), records)
    found: list[dict[str, Any]] = [{} for _ in range(records)]
    for index, task in enumerate(schema.tasks):
        classes = len(task.classes)
        raw = _scores(outputs.get(task.outputs.get("raw", f"{task.name}_raw")), records, classes)
        calibrated = _scores(outputs.get(task.outputs.get("calibrated", f"{task.name}_calibrated")), records, classes)
        label = _rows(outputs.get(task.outputs.get("label", f"{task.name}_label")), records)
        decision = _rows(outputs.get(task.outputs.get("decision", f"{task.name}_decision")), records)
        for row in range(records):
            entry: dict[str, Any] = {}
            for part, values in (("raw", raw), ("calibrated", calibrated)):
                if values is not None:
                    entry[part] = dict(zip(task.classes, values[row], strict=True))
            if label is not None:
                entry["label"] = _text(label[row, 0])
            if fallback is not None and index < fallback.shape[1]:
                entry["calibration_fallback"] = bool(fallback[row, index])
            if decision is not None:
                entry["decision"] = _text(decision[row, 0])
            if entry:
                found[row][task.name] = entry
    return found


def _input_values(tensor: InputTensor) -> np.ndarray:
    if tensor.datatype == "BYTES":  # the door framed it (check_raw): whole
        return np.array([_text(v) for v in unframe_strings(tensor.raw)], dtype=object).reshape(tensor.shape)
    dtype = np.dtype(NUMPY_TYPES[tensor.datatype]).newbyteorder("<")
    return np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return _number(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _input_records(schema: EnsembleSchema, request: InferRequest, records: int) -> list[dict[str, Any]] | None:
    """Each record's inputs as a v1 caller sends them (field -> value; missing numbers null)."""
    by_tensor = {schema.inputs.get("numeric"): schema.numeric_features,
                 schema.inputs.get("categorical"): schema.categorical_features}
    found: list[dict[str, Any]] = [{} for _ in range(records)]
    for tensor in request.inputs:
        if not tensor.shape or tensor.shape[0] != records:
            return None
        rows = _input_values(tensor).reshape(records, -1)
        names = by_tensor.get(tensor.name)
        for row in range(records):
            if names is not None and len(names) == rows.shape[1]:
                found[row].update({n: _plain(v) for n, v in zip(names, rows[row], strict=True)})
            elif rows.shape[1] == 1:
                found[row][tensor.name] = _plain(rows[row, 0])
            else:
                found[row][tensor.name] = [_plain(v) for v in rows[row]]
    return found


def entries(item: Answered, schema: EnsembleSchema, inputs: bool = False) -> list[dict[str, Any]]:
    """The log entries (one per record) of one answered request."""
    outputs = answer_tensors(item.answer.headers, item.answer.body)
    sizes = [a.shape[0] for a in outputs.values() if a.ndim]
    if not sizes:
        return []
    records = sizes[0]
    versions = _rows(outputs.get(schema.outputs.get("calibration_version", "")), records)
    releases = _rows(outputs.get(schema.outputs.get("release", "")), records)
    tasks = _task_entries(schema, outputs, records)
    features = _input_records(schema, item.request, records) if inputs else None
    stamp = timestamp(item.time_s)
    found = []
    for row in range(records):
        entry: dict[str, Any] = {
            "id": item.request_id if records == 1 else f"{item.request_id}/{row}",
            "request_id": item.request_id, "record": row, "timestamp": stamp, "model": item.request.model,
            "release": _text(releases[row, 0]) if releases is not None else None,
            "calibration_version": _text(versions[row, 0]) if versions is not None else None,
            "tasks": tasks[row], "id_source": item.id_source}
        if features is not None:
            entry["inputs"] = features[row]
        found.append(entry)
    return found


def read_lines(path: Path) -> Iterator[str]:
    """The complete lines of a log file: a line still being written (no newline yet) is left out."""
    with open(path, "rb") as handle:
        data = handle.read()
    end = data.rfind(b"\n")
    for line in data[:end + 1].decode("utf-8", errors="replace").splitlines():
        if line.strip():
            yield line


class LogFiles:
    """One worker's files: whole-line appends to the active file, rotated by size."""

    def __init__(self, directory: Path, worker: str, max_file_bytes: int, keep_files: int) -> None:
        self.directory, self.worker = directory, worker
        self.max_file_bytes, self.keep_files = max_file_bytes, keep_files
        self.path = active_file(directory, worker)
        self._descriptor: int | None = None
        self._lock: int | None = None
        self._size = 0

    def open(self) -> "LogFiles":
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self.directory / f".{PREFIX}{self.worker}.lock", os.O_WRONLY | os.O_CREAT, 0o640)
        except OSError as error:
            raise PredictionLogError(f"prediction log: cannot write in {self.directory}: {error.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise PredictionLogError(f"prediction log: another gateway writes {self.path}; give each gateway its "
                                     "own directory") from None
        self._open_active()
        return self

    def _open_active(self) -> None:
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._size = os.fstat(self._descriptor).st_size
        if self._size:
            self._cut_half_line()

    def _cut_half_line(self) -> None:
        """A worker killed in a write may have left a line without its end: cut it off."""
        assert self._descriptor is not None
        with open(self.path, "rb") as handle:
            handle.seek(max(0, self._size - 1))
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
        self._size = data.rfind(b"\n") + 1
        os.ftruncate(self._descriptor, self._size)

    def append(self, lines: list[bytes]) -> None:
        """Whole lines, each ending in a newline; a file never grows past ``max_file_bytes``
        by more than one line."""
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if size and size + len(line) > self.max_file_bytes:
                self._write(b"".join(chunk))
                chunk = []
                self.rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        assert self._descriptor is not None
        before, done = self._size, 0
        try:
            while done < len(data):
                done += os.write(self._descriptor, data[done:])
        except OSError:
            os.ftruncate(self._descriptor, before)  # no half line stays behind
            raise
        self._size = before + done

    def rotate(self) -> Path | None:
        """The active file becomes a finished one; the oldest beyond ``keep_files`` go."""
        if self._descriptor is None or not self._size:
            return None
        os.close(self._descriptor)
        self._descriptor = None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.directory / f"{PREFIX}{self.worker}-{stamp}{SUFFIX}"
        while target.exists():  # two rotations within a microsecond
            stamp += "0"
            target = self.directory / f"{PREFIX}{self.worker}-{stamp}{SUFFIX}"
        os.rename(self.path, target)
        for old in rotated_files(self.directory, self.worker)[:-self.keep_files]:
            old.unlink(missing_ok=True)
        self._open_active()
        return target

    def close(self) -> None:
        for descriptor in (self._descriptor, self._lock):
            if descriptor is not None:
                os.close(descriptor)
        self._descriptor = self._lock = None


def _say(line: str) -> None:
    print(f"tce_gateway: {line}", file=sys.stderr, flush=True)


class PredictionLog:
    """A door worker's prediction log: ``offer`` on the event loop, a writer thread behind."""

    def __init__(self, config: PredictionLogConfig, worker: str, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, log: Callable[[str], None] = _say,
                 log_every: int = 1000) -> None:
        self.config, self.worker = config, worker
        self._rng = rng or random.Random()
        self._clock, self._log, self._log_every = clock, log, log_every
        self._queue: queue.Queue[Answered] = queue.Queue(maxsize=config.queue_entries)
        self._files = LogFiles(Path(config.directory), worker, config.max_file_bytes, config.keep_files)
        self._schemas: dict[str, EnsembleSchema] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.logged = 0      # requests put on the queue
        self.dropped = 0     # requests sampled but dropped: the queue was full
        self.written = 0     # records written
        self.failed = 0      # requests that could not be decoded or written
        self._reasons: set[str] = set()

    def start(self) -> "PredictionLog":
        self._files.open()
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{self.worker}", daemon=True)
        self._thread.start()
        return self

    def offer(self, request: InferRequest, signature: ModelSignature, answer: HttpAnswer,
              caller_id: str | None = None) -> str | None:
        """Log this answered request if it is drawn; returns the id it is logged under (None:
        not drawn, not an answer of a ``tce build`` ensemble, or dropped). Never blocks."""
        if answer.status != 200 or signature.published_schema is None:
            return None
        if self.config.rate < 1 and self._rng.random() >= self.config.rate:
            return None
        if request.id:
            request_id, source = request.id, "request"
        elif caller_id:
            request_id, source = caller_id, "header"
        else:
            request_id, source = uuid.uuid4().hex, "gateway"
        try:
            self._queue.put_nowait(Answered(self._clock(), request_id, source, request, signature, answer))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % self._log_every == 0:
                self._log(self.line() + " (the writer falls behind: lower --prediction-log-rate)")
            return None
        self.logged += 1
        return request_id

    def _run(self) -> None:
        while True:
            batch: list[Answered] = []
            try:
                batch.append(self._queue.get(timeout=0.2))
                while len(batch) < _WRITE_BATCH:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if batch:
                self._write(batch)
            elif self._stopping.is_set():
                return

    def _write(self, batch: list[Answered]) -> None:
        lines: list[bytes] = []
        for item in batch:
            try:
                schema = self._schema(item.signature)
                lines += [json.dumps(e, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
                          for e in entries(item, schema, self.config.inputs)]
            except Exception as error:  # noqa: BLE001 - one unreadable answer must not stop the writer
                self._fail(1, f"an answer could not be read ({type(error).__name__}: {str(error)[:200]})")
        try:
            self._files.append(lines)
        except OSError as error:
            self._fail(len(batch), f"the log could not be written ({error.strerror})")
            return
        self.written += len(lines)

    def _schema(self, signature: ModelSignature) -> EnsembleSchema:
        text = signature.published_schema or ""
        schema = self._schemas.get(text)
        if schema is None:
            schema = self._schemas[text] = EnsembleSchema.from_json(text)
        return schema

    def _fail(self, count: int, why: str) -> None:
        self.failed += count
        if why not in self._reasons:
            self._reasons.add(why)
            self._log(f"{self.line()}; {why}")

    def line(self) -> str:
        return (f"prediction log (worker {self.worker}, {self._files.path}): {self.logged} requests logged, "
                f"{self.written} records written, {self.dropped} dropped (queue full), {self.failed} failed")

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, close the file and log the counts."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self._files.close()
        if self.logged or self.dropped or self.failed:
            self._log(self.line())

    def __enter__(self) -> "PredictionLog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def caller_id(value: str | None, max_chars: int, what: str = f"{ID_HEADER} header") -> str | None:
    """A caller's ``X-Request-Id`` (or gRPC ``x-request-id``), checked: None when absent; a
    ValueError naming the rule when it is not 1..max_chars printable ASCII characters."""
    if value is None:
        return None
    if not value or len(value) > max_chars or not (value.isascii() and value.isprintable()):
        raise ValueError(f"the {what} must be 1 to {max_chars} printable ASCII characters")
    return value
