"""Progress of a batch job: a bar with records/s on a terminal, a plain line every
``interval_s`` otherwise (CI logs, files): logged (``tce.lib.logs``), with the counts as fields."""
from __future__ import annotations

import logging
import sys
import time
from typing import IO, Callable

log = logging.getLogger(__name__)


class Progress:
    """``stream``: write the lines there (if not given: log them, and draw the bar on a terminal's stderr)."""

    def __init__(self, total: int | None, label: str, stream: IO[str] | None = None, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self.done = 0        # rows accounted for, skipped ones included
        self.scored = 0      # rows scored in this run
        self.started = clock()
        self._last_line = self.started
        self._bar = None
        if (stream or sys.stderr).isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="rec", file=stream or sys.stderr, dynamic_ncols=True)

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.scored / elapsed if elapsed > 0 else 0.0

    def skip(self, rows: int) -> None:
        """Rows a resumed job found already scored."""
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)

    def update(self, rows: int) -> None:
        self.done += rows
        self.scored += rows
        if self._bar is not None:
            self._bar.update(rows)
        elif self.clock() - self._last_line >= self.interval_s:
            self._line()

    def _line(self) -> None:
        self._last_line = self.clock()
        of = f"/{self.total}" if self.total is not None else ""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        line = f"{self.label}: {self.done}{of} records{share}, {self.rate:.1f} records/s"
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        else:
            log.info(line, extra={"records_done": self.done, "records_total": self.total,
                                  "records_per_s": round(self.rate, 1)})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._line()
