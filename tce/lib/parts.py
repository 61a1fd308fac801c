"""The completed chunks of a resumable batch job, and the output made from them.

A job writes each scored chunk as ``OUT/.tce_job/part-<index>.parquet``, whole or not
at all (written aside, then renamed). ``job.json`` records what the job was (inputs,
options, the served outputs), so a rerun with other inputs or options is refused
instead of mixing two jobs in one file, and each part's row range and SHA-256.
Rerunning the same command skips the chunks whose part matches its record; a part
that does not (replaced, cut short, doubled, garbage) is scored again, never trusted.
When every chunk is there the parts are checked once more and joined, in order, into
the output file, and only then ``_SUCCESS`` and ``_HEALTH`` appear.

The records of a chunk that could not be scored are saved beside its part
(``rejects-<index>.parquet``, recorded the same way) and joined into the rejects file
before the output; past the job's limit (``tce.lib.rejects``) the rejects file is all
that is written: no output, no marker, and the saved parts stay for a rerun.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tce.lib.rejects import RejectLimit
from tce_backends.errors import UsageError

WORK_DIR = ".tce_job"
SUCCESS = "_SUCCESS"
HEALTH = "_HEALTH"

Render = Callable[[Iterator[pa.Table], Path], None]


@dataclass(frozen=True)
class RejectsOutput:
    """Where and how a job writes the records it could not score, and how many it may."""

    name: str          # file name in the output directory
    render: Render
    limit: RejectLimit


class JobDirectory:
    """``out``'s markers and parts for the job described by ``identity``.

    ``shard=(i, n)``: this run scores chunks i, i+n, i+2n ... of the input into a work
    directory of its own; when a shard finds all n shards done, it joins their parts into
    the one output (``combine_shards``)."""

    def __init__(self, out: Path, identity: dict[str, Any], outputs: tuple[str, ...], restart: bool = False,
                 shard: tuple[int, int] | None = None) -> None:
        self.out = Path(out)
        self.shard = shard
        self.work = self.out / WORK_DIR / (shard_name(*shard) if shard else "")
        self.identity = json.loads(json.dumps(identity))  # as it reads back from job.json
        self.outputs = outputs  # file names the job writes into ``out``
        self.records: dict[str, dict[str, Any]] = {}  # part index -> its row range and checksum
        with _writing(self.out):
            if restart:
                self.clear()
            self.out.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        recorded = self.work / "job.json"
        joined = self.out / WORK_DIR / "job.json"  # a sharded job's record, once its shards were joined
        if self.shard is not None and not recorded.is_file() and joined.is_file() and self.finished:
            if json.loads(joined.read_text(encoding="utf-8")).get("identity") == self.identity:
                return
        if recorded.is_file():
            earlier = json.loads(recorded.read_text(encoding="utf-8"))
            identity = earlier.get("identity", earlier)  # earlier versions wrote the identity alone
            self.records = earlier.get("parts", {})
            if identity != self.identity:
                if not self.finished and self.rows_done() == 0:  # nothing saved: nothing to lose, start over
                    self.clear()
                    self.records = {}
                    self._open()
                    return
                changed = sorted(k for k in {*identity, *self.identity} if identity.get(k) != self.identity.get(k))
                state = "finished output" if self.finished else \
                    f"a partial run ({self.rows_done()} rows saved; the same command with its inputs finishes it)"
                raise UsageError(f"{self.out} holds {state} of a job with other {'; '.join(changed)}: add "
                                 "--restart to drop it and start over, or choose another output directory")
        elif (self.out / SUCCESS).exists():
            raise UsageError(f"{self.out} already holds finished output of another job; choose another output "
                             "directory, or add --restart to replace it")
        else:
            self.work.mkdir(parents=True, exist_ok=True)
            self._save_records()

    def _save_records(self) -> None:
        _replace_text(self.work / "job.json", json.dumps({"identity": self.identity, "parts": self.records},
                                                         indent=1))

    @property
    def finished(self) -> bool:
        return (self.out / SUCCESS).is_file()

    def clear(self) -> None:
        """Remove everything this job writes, and nothing else in ``out``."""
        shutil.rmtree(self.work, ignore_errors=True)
        for name in (*self.outputs, SUCCESS, HEALTH):
            (self.out / name).unlink(missing_ok=True)

    def _part(self, index: int) -> Path:
        return self.work / f"part-{index:06d}.parquet"

    def _rejects_part(self, index: int) -> Path:
        return self.work / f"rejects-{index:06d}.parquet"

    def mine(self, index: int) -> bool:
        """Whether chunk ``index`` is this run's to score."""
        return self.shard is None or index % self.shard[1] == self.shard[0]

    def done(self, index: int, start: int | None = None, rows: int | None = None) -> bool:
        """Part ``index`` is saved and matches its record (rows ``start``..``start+rows`` when given)."""
        record = self.records.get(str(index))
        if record is None or (start is not None and record["start"] != start) or \
                (rows is not None and record["rows"] != rows):
            return False
        path = self._part(index)
        if not (path.is_file() and _sha256(path) == record["sha256"]):
            return False
        rejects = self._rejects_part(index)
        return not record.get("rejects") or (rejects.is_file() and _sha256(rejects) == record["rejects_sha256"])

    def rows_done(self) -> int:
        return sum(r["rows"] for i, r in self.records.items() if self._part(int(i)).is_file())

    def write(self, index: int, table: pa.Table, start: int = 0, rows: int | None = None,
              rejects: pa.Table | None = None) -> None:
        """Save the chunk of ``rows`` input rows from ``start`` (if not given: ``table``'s) as
        part ``index``, and the chunk's rejected records: whole, then recorded."""
        record: dict[str, Any] = {"start": start, "rows": table.num_rows if rows is None else rows,
                                  "scored": table.num_rows}
        rejects_aside = self._rejects_part(index).with_suffix(".tmp")
        if rejects is not None and rejects.num_rows:
            with _writing(rejects_aside):
                pq.write_table(rejects, rejects_aside)
            record.update(rejects=rejects.num_rows, rejects_sha256=_sha256(rejects_aside))
        aside = self._part(index).with_suffix(".tmp")
        with _writing(aside):
            pq.write_table(table, aside)
            # Recorded first: a part file that exists is always one its record vouches for.
            self.records[str(index)] = {**record, "sha256": _sha256(aside)}
            self._save_records()
            if "rejects" in record:
                os.replace(rejects_aside, self._rejects_part(index))
            os.replace(aside, self._part(index))

    def bad_parts(self, count: int) -> list[int]:
        """Parts 0..count-1 that are missing or do not match their record (each then forgotten)."""
        bad = [i for i in range(count) if self.mine(i) and (not self.done(i) or not self._contiguous(i))]
        for index in bad:
            self.records.pop(str(index), None)
            self._part(index).unlink(missing_ok=True)
        if bad:
            self._save_records()
        return bad

    def _contiguous(self, index: int) -> bool:
        if self.shard is not None:  # the chunk before belongs to another shard
            return True
        if index == 0:
            return self.records[str(index)]["start"] == 0
        before = self.records.get(str(index - 1))
        return before is not None and before["start"] + before["rows"] == self.records[str(index)]["start"]

    def read_part(self, index: int) -> pa.Table:
        record = self.records[str(index)]
        table = pq.read_table(self._part(index))
        if table.num_rows != record.get("scored", record["rows"]):
            raise UsageError(f"{self._part(index)} changed while the output was written; rerun the command")
        return table

    def read_rejects(self, index: int) -> pa.Table | None:
        """Part ``index``'s rejected records, if it has any."""
        record = self.records[str(index)]
        if not record.get("rejects"):
            return None
        table = pq.read_table(self._rejects_part(index))
        if table.num_rows != record["rejects"]:
            raise UsageError(f"{self._rejects_part(index)} changed while the output was written; rerun the command")
        return table

    def counts(self, index: int) -> tuple[int, int]:
        """(input rows, rejected records) of saved part ``index``."""
        record = self.records[str(index)]
        return record["rows"], record.get("rejects", 0)

    def parts(self, count: int) -> Iterator[pa.Table]:
        for index in range(count):
            yield self.read_part(index)

    def finish(self, count: int, render: Render, name: str, rejects: RejectsOutput | None = None) -> Path | None:
        """Join parts 0..count-1 into ``out/name`` with ``render``, then the markers. A shard
        marks itself done and joins all shards' parts when it is the last; else None.
        Rejected records go to ``rejects.name`` first; past ``rejects.limit``, RejectsExceeded."""
        missing = [i for i in range(count) if self.mine(i) and not self.done(i)]
        if missing:
            raise UsageError(f"{self.work} lacks the chunks {missing[:5]}; rerun the command to score them")
        if self.shard is not None:
            _replace_text(self.work / SHARD_DONE, json.dumps({"chunks": count}))
            return combine_shards(self.out, self.shard[1], self.identity, render, name, rejects)
        stray = sorted(p.name for p in self.work.glob("part-*.parquet") if int(p.stem.split("-")[1]) >= count)
        if stray:
            raise UsageError(f"{self.work} holds chunks beyond the input's end ({', '.join(stray[:3])}): the input "
                             "changed; add --restart")
        _join_rejects(self.out, rejects, [self] * count)
        target = self.out / name
        aside = target.with_name(f".{name}.tmp")
        with _writing(aside):
            render(self.parts(count), aside)
            os.replace(aside, target)
            for part in [*self.work.glob("part-*.parquet"), *self.work.glob("rejects-*.parquet")]:
                part.unlink()
            write_markers(self.out)
        return target


SHARD_DONE = "_SHARD_DONE"
STALE_LOCK_S = 600.0


def shard_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (the I-th of N disjoint parts, counting from 0) -> (I, N)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise UsageError(f"--shard takes I/N with 0 <= I < N (the I-th of N parts, from 0), got {text!r}")
    return int(index), int(count)


def shards_done(out: Path, count: int) -> list[int]:
    return [i for i in range(count) if (Path(out) / WORK_DIR / shard_name(i, count) / SHARD_DONE).is_file()]


def combine_shards(out: Path, count: int, identity: dict[str, Any], render: Render, name: str,
                   rejects: RejectsOutput | None = None) -> Path | None:
    """When all ``count`` shards are done, join their parts (chunk c from shard c % count,
    in input order) into ``out/name`` and write the markers; the first shard to see them all
    done does it (a lock file), the others return None."""
    out = Path(out)
    if len(shards_done(out, count)) < count or (out / SUCCESS).exists():
        return out / name if (out / SUCCESS).exists() else None
    lock_path = out / WORK_DIR / "combine.lock"
    if lock_path.exists() and time.time() - lock_path.stat().st_mtime > STALE_LOCK_S:
        lock_path.unlink(missing_ok=True)  # a shard died while joining: the next one joins
    try:
        lock = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None  # another shard is joining them
    os.close(lock)
    shards = [JobDirectory(out, identity, (name,), shard=(i, count)) for i in range(count)]
    chunks = {json.loads((s.work / SHARD_DONE).read_text(encoding="utf-8"))["chunks"] for s in shards}
    if len(chunks) != 1:
        lock_path.unlink()
        raise UsageError(f"the {count} shards of {out} read different inputs ({sorted(chunks)} chunks); rerun "
                         "every shard with --restart")
    (total,) = chunks
    missing = [c for c in range(total) if not shards[c % count].done(c)]
    if missing:
        lock_path.unlink()
        raise UsageError(f"shard parts for chunks {missing[:5]} do not match their records; rerun those shards")
    try:
        _join_rejects(out, rejects, [shards[c % count] for c in range(total)])
    except BaseException:
        lock_path.unlink(missing_ok=True)  # past the limit: a rerun (with a higher one) joins them
        raise
    target = out / name
    aside = target.with_name(f".{name}.tmp")
    with _writing(aside):
        render((shards[c % count].read_part(c) for c in range(total)), aside)
        os.replace(aside, target)
        write_markers(out)
        for shard in shards:
            shutil.rmtree(shard.work, ignore_errors=True)
        _replace_text(out / WORK_DIR / "job.json", json.dumps({"identity": identity, "parts": {}}, indent=1))
        lock_path.unlink(missing_ok=True)
    return target


def _join_rejects(out: Path, rejects: RejectsOutput | None, owners: list[JobDirectory]) -> None:
    """Write the rejected records of chunks 0..len(owners)-1 (chunk c saved by ``owners[c]``)
    into ``out/rejects.name`` (removed when there are none), then hold them to the limit."""
    if rejects is None:
        return
    counts = [owner.counts(index) for index, owner in enumerate(owners)]
    records, rejected = sum(c[0] for c in counts), sum(c[1] for c in counts)
    target = out / rejects.name
    if rejected == 0:
        target.unlink(missing_ok=True)  # an earlier run's, of records fixed since
        return
    aside = target.with_name(f".{rejects.name}.tmp")
    with _writing(aside):
        tables = (owner.read_rejects(index) for index, owner in enumerate(owners))
        rejects.render((table for table in tables if table is not None), aside)
        os.replace(aside, target)
    rejects.limit.check(rejected, records, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_text(path: Path, text: str) -> None:
    aside = path.with_name(f".{path.name}.tmp")
    with _writing(aside):
        aside.write_text(text, encoding="utf-8")
        os.replace(aside, path)


class _writing:
    """A failed write (read-only directory, full disk) is one clear line, and the file
    written aside is removed."""

    def __init__(self, aside: Path) -> None:
        self.aside = aside

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, _: object) -> bool:
        if error is None or not isinstance(error, OSError):
            return False
        if self.aside.name.endswith(".tmp"):
            self.aside.unlink(missing_ok=True)
        raise UsageError(f"cannot write in {self.aside.parent}: {error.strerror or error}") from None


def write_markers(out: Path) -> None:
    """Seed 001's markers: an empty ``_SUCCESS`` and ``_HEALTH`` with the time."""
    (out / SUCCESS).write_text("", encoding="utf-8")
    (out / HEALTH).write_text(f"healthy: {datetime.now().isoformat()}\n", encoding="utf-8")
