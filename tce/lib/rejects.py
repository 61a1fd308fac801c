"""Records a batch job cannot score: the limit on how many it may leave out, and the
table that lists them beside the predictions.

A rejected record (text that is not valid UTF-8, a number that does not parse, ...) is
left out of the predictions and listed with its ID, where it is (file and 1-based data
row), the field and the reason. The job still succeeds unless the rejects exceed the
limit (``--max-rejects``): then it names the rejects file and writes no marker.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from tce_backends.errors import UsageError

REJECT_COLUMNS = ("file", "row", "field", "reason")  # after the ID column, when the job keeps one
REJECTS_FLAG = "--max-rejects"
DEFAULT_REJECT_LIMIT = "10 or 0.1%"


class RejectsExceeded(UsageError):
    """More records were rejected than the job allows; their list is in the rejects file."""


@dataclass(frozen=True)
class RejectLimit:
    """At most ``max(count, floor(fraction * records))`` rejected records.

    The default lets a one-off bad record through on any file (10), and still stops a
    file that is broken throughout (a wrong encoding, a shifted column) at 0.1%."""

    count: int = 10
    fraction: float = 0.001

    def __post_init__(self) -> None:
        if self.count < 0 or not 0.0 <= self.fraction <= 1.0:
            raise UsageError(f"{REJECTS_FLAG} takes a count >= 0 or a fraction in [0, 1], got {self.describe()}")

    @classmethod
    def parse(cls, text: str) -> "RejectLimit":
        """``10`` (records), ``0.5%`` (of the records), ``0.005`` (a fraction below 1)."""
        value = text.strip()
        if value == DEFAULT_REJECT_LIMIT:
            return cls()
        percent = value.endswith("%")
        number = value[:-1].strip() if percent else value
        if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", number):
            raise UsageError(f"{REJECTS_FLAG} takes a count (10), a percentage (0.1%) or a fraction (0.001), "
                             f"got {text!r}")
        amount = float(number)
        if percent:
            if amount > 100:
                raise UsageError(f"{REJECTS_FLAG} takes a percentage up to 100%, got {text!r}")
            return cls(0, amount / 100)
        if "." in number:
            if amount > 1:
                raise UsageError(f"{REJECTS_FLAG} takes a whole count or a fraction up to 1, got {text!r}")
            return cls(0, amount)
        return cls(int(number), 0.0)

    def allowed(self, records: int) -> int:
        return max(self.count, math.floor(self.fraction * records + 1e-9))

    def describe(self) -> str:
        percent = f"{self.fraction * 100:g}%"
        if self.fraction == 0:
            return str(self.count)
        return percent if self.count == 0 else f"{self.count} or {percent}, whichever is more"

    def check(self, rejected: int, records: int, listed_in: Path) -> None:
        """Raise RejectsExceeded past the limit (one line naming the rejects file)."""
        if rejected > self.allowed(records):
            raise RejectsExceeded(f"{rejected} of {records} records could not be scored, more than "
                                  f"{REJECTS_FLAG} allows ({self.describe()}); {listed_in} lists them with the field "
                                  f"and the reason. Fix them, or raise {REJECTS_FLAG} and rerun the same command "
                                  "(scored chunks are kept)")


@dataclass(frozen=True)
class Reject:
    row: int      # 0-based, across the whole input
    field: str
    reason: str


Locate = Callable[[int], tuple[str, int]]  # input row (0-based) -> (file name, 1-based data row)


def rejects_name(output_stem: str) -> str:
    """``inference_predictions`` -> ``inference_rejects`` (``eval_predictions`` -> ``eval_rejects``)."""
    stem = output_stem[:-len("_predictions")] if output_stem.endswith("_predictions") else output_stem
    return f"{stem}_rejects"


def rejects_table(rejects: list[Reject], ids: pa.Array | None, id_field: str | None,
                  locate: Locate) -> pa.Table:
    """The rejects of one chunk: the ID (``ids[i]`` is rejects[i]'s), file, row, field, reason."""
    places = [locate(r.row) for r in rejects]
    columns = {"file": pa.array([p[0] for p in places], pa.string()),
               "row": pa.array([p[1] for p in places], pa.int64()),
               "field": pa.array([r.field for r in rejects], pa.string()),
               "reason": pa.array([r.reason for r in rejects], pa.string())}
    if id_field is not None and ids is not None:
        name = id_field if id_field not in columns else f"input_{id_field}"  # an ID column called 'row'
        columns = {name: ids, **columns}
    return pa.table(columns)


