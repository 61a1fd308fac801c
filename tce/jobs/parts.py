"""The completed chunks of a resumable batch job, and the output made from them.

A job writes each scored chunk as ``OUT/.tce_job/part-<index>.parquet``, whole or not
at all (written aside, then renamed). Rerunning the same command skips the chunks
that exist; when every chunk is there the parts are joined, in order, into the
output file, and only then ``_SUCCESS`` and ``_HEALTH`` appear. ``job.json`` records
what the job was (inputs, options, the served outputs), so a rerun with other
inputs or options is refused instead of mixing two jobs in one file.
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tce_backends.errors import UsageError

WORK_DIR = ".tce_job"
SUCCESS = "_SUCCESS"
HEALTH = "_HEALTH"

Render = Callable[[Iterator[pa.Table], Path], None]


class JobDirectory:
    """``out``'s markers and parts for the job described by ``identity``."""

    def __init__(self, out: Path, identity: dict[str, Any], outputs: tuple[str, ...], restart: bool = False) -> None:
        self.out = Path(out)
        self.work = self.out / WORK_DIR
        self.identity = json.loads(json.dumps(identity))  # as it reads back from job.json
        self.outputs = outputs  # file names the job writes into ``out``
        if restart:
            self.clear()
        self.out.mkdir(parents=True, exist_ok=True)
        recorded = self.work / "job.json"
        if recorded.is_file():
            earlier = json.loads(recorded.read_text(encoding="utf-8"))
            if earlier != self.identity:
                changed = sorted(k for k in {*earlier, *self.identity} if earlier.get(k) != self.identity.get(k))
                state = "finished output" if self.finished else "a partial run (rerun its command to finish it)"
                raise UsageError(f"{self.out} holds {state} of a job with other {'; '.join(changed)}: add "
                                 "--restart to start over, or choose another output directory")
        elif (self.out / SUCCESS).exists():
            raise UsageError(f"{self.out} already holds finished output of another job; choose another output "
                             "directory, or add --restart to replace it")
        else:
            self.work.mkdir(parents=True, exist_ok=True)
            recorded.write_text(json.dumps(self.identity, indent=1), encoding="utf-8")

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

    def done(self, index: int) -> bool:
        return self._part(index).is_file()

    def rows_done(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.work.glob("part-*.parquet"))

    def write(self, index: int, table: pa.Table) -> None:
        aside = self._part(index).with_suffix(".tmp")
        pq.write_table(table, aside)
        os.replace(aside, self._part(index))

    def parts(self, count: int) -> Iterator[pa.Table]:
        for index in range(count):
            yield pq.read_table(self._part(index))

    def finish(self, count: int, render: Render, name: str) -> Path:
        """Join parts 0..count-1 into ``out/name`` with ``render``, then the markers."""
        missing = [i for i in range(count) if not self.done(i)]
        if missing:
            raise UsageError(f"{self.work} lacks the chunks {missing[:5]}; add --restart to score again")
        stray = sorted(p.name for p in self.work.glob("part-*.parquet") if int(p.stem.split("-")[1]) >= count)
        if stray:
            raise UsageError(f"{self.work} holds chunks beyond the input's end ({', '.join(stray[:3])}): the input "
                             "changed; add --restart")
        target = self.out / name
        aside = target.with_name(f".{name}.tmp")
        render(self.parts(count), aside)
        os.replace(aside, target)
        for part in self.work.glob("part-*.parquet"):
            part.unlink()
        write_markers(self.out)
        return target


def write_markers(out: Path) -> None:
    """Seed 001's markers: an empty ``_SUCCESS`` and ``_HEALTH`` with the time."""
    (out / SUCCESS).write_text("", encoding="utf-8")
    (out / HEALTH).write_text(f"healthy: {datetime.now().isoformat()}\n", encoding="utf-8")
