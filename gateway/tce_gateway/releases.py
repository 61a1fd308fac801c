"""The repository's ``releases.json`` as the door reads it: which ensemble holds releases,
which release is current, and the traffic split towards a candidate.

``{"ensemble": E, "current": 2, "previous": 1, "releases": [...], "traffic": null}`` or
``"traffic": {"release": 3, "share": 0.1, "mode": "canary" | "shadow"}``. Only ``ensemble``,
``current`` and ``traffic`` matter here; the rest is ``tce release``'s.

The file is written by staging and rename, so a changed file is a new inode: the door
stats it at most once a second and reads it again when its inode, size or time changed.
A missing file means no split. A file that cannot be read or is malformed is logged once
(until it changes) and means no split too: serving never stops for it."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tce_backends.contract import RELEASES_FILE
from tce_gateway.signatures import MODEL_NAME

MODES = ("canary", "shadow")
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Traffic:
    """A share of the unversioned requests for the ensemble that goes to release ``release``
    (canary: it answers them) or is also sent there (shadow: its answers are only compared)."""

    release: int
    share: float
    mode: str

    def __post_init__(self) -> None:
        if type(self.release) is not int or self.release < 1:
            raise ValueError(f"traffic 'release' must be a release number (an integer >= 1), got {self.release!r}")
        if type(self.share) not in (int, float) or not math.isfinite(self.share) or not 0 <= self.share <= 1:
            raise ValueError(f"traffic 'share' must be a number in [0, 1], got {self.share!r}")
        if self.mode not in MODES:
            raise ValueError(f"traffic 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass(frozen=True)
class ReleaseState:
    ensemble: str | None = None     # None: no releases.json (or an unusable one)
    current: int | None = None
    traffic: Traffic | None = None


NO_RELEASES = ReleaseState()


def _release_number(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError(f"{what} must be a release number (an integer >= 1) or null, got {value!r}")
    return value


def parse_releases(text: str) -> ReleaseState:
    """The state a ``releases.json`` describes, or ValueError saying what is wrong."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("the document must be a JSON object")
    ensemble = document.get("ensemble")
    if not isinstance(ensemble, str) or not MODEL_NAME.fullmatch(ensemble):
        raise ValueError(f"'ensemble' must be a model name, got {ensemble!r}")
    current = _release_number(document.get("current"), "'current'")
    traffic = document.get("traffic")
    if traffic is None:
        return ReleaseState(ensemble, current)
    if not isinstance(traffic, dict) or set(traffic) != {"release", "share", "mode"}:
        raise ValueError("'traffic' must be null or {\"release\": n, \"share\": s, \"mode\": \"canary\" | \"shadow\"}")
    return ReleaseState(ensemble, current, Traffic(traffic["release"], traffic["share"], traffic["mode"]))


def _say(line: str) -> None:
    print(f"tce_gateway: {line}", file=sys.stderr, flush=True)


class ReleaseWatcher:
    """``state()``: the repository's release state, re-read when ``releases.json`` changed
    (stat at most once every ``interval_s``)."""

    def __init__(self, repository: Path | str, interval_s: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = _say) -> None:
        self.path = Path(repository) / RELEASES_FILE
        self._interval_s = interval_s
        self._clock = clock
        self._log = log
        self._checked = -math.inf
        self._seen: tuple[int, int, int, int] | None = None
        self._state = NO_RELEASES
        self._complained: tuple[int, int, int, int] | None = None

    def state(self) -> ReleaseState:
        now = self._clock()
        if now - self._checked < self._interval_s:
            return self._state
        self._checked = now
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._state = None, NO_RELEASES
            return self._state
        except OSError as error:
            self._seen = None
            return self._unusable((-1, -1, -1, -1), f"cannot be read ({error})")
        key = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if key != self._seen:
            self._seen = key
            try:
                self._state = parse_releases(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                return self._unusable(key, f"is malformed ({error})")
            if self._complained is not None:
                self._complained = None
                self._log(f"{self.path} is readable again: {describe(self._state)}")
        return self._state

    def _unusable(self, key: tuple[int, int, int, int], why: str) -> ReleaseState:
        self._state = NO_RELEASES
        if key != self._complained:  # once per version of the file
            self._complained = key
            self._log(f"{self.path} {why}: no traffic split until it is fixed; unversioned requests go to the "
                      "current release")
        return self._state


def describe(state: ReleaseState) -> str:
    traffic = state.traffic
    if traffic is None:
        return f"ensemble '{state.ensemble}', current release {state.current}, no traffic split"
    return (f"ensemble '{state.ensemble}', current release {state.current}, {traffic.mode} of "
            f"{traffic.share:.3g} towards release {traffic.release}")
