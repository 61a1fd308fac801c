"""Releases in one model repository: ``releases.json`` and its rules.

A release pins one version of each step (``steps``: preprocessor, multimodal_model,
calibrator), so every request runs one bundle's preprocessing, model and calibration,
never a mix. The repository root holds ``releases.json`` (``contract.RELEASES_FILE``):

    {"ensemble": "calibrated_ensemble", "current": 2, "previous": 1,
     "releases": [{"release": 1, "bundle": "demo_bimodal", "fingerprint": "...",
                   "calibration_version": "...", "model_fingerprint": "...",
                   "steps": {"preprocessor": 1, "multimodal_model": 1, "calibrator": 1},
                   "state": "previous"}, ...],
     "traffic": null}

States: ``candidate`` (loaded beside the current release, answers only when named),
``current`` (the ensemble pins it), ``previous`` (the current one before the last
switch, still loaded: ``rollback`` is instant), ``retired`` (unloaded, its version
directories removed; kept in the list as history). ``fingerprint`` is the bundle's
preprocessing and model (``Bundle.fingerprint``); ``model_fingerprint`` is its
``model.pt`` alone, which calibration tables record being fitted for. ``traffic``
is null or ``{"release": <candidate>, "share": 0 < s <= 1, "mode": "canary" | "shadow"}``.

Every change is a new ``Releases`` value from a rule below (which refuses, in one
line, what makes no sense), written by staging and rename: a reader never sees half
a file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from tce_backends.contract import RELEASES_FILE
from tce_backends.errors import UsageError
from tce_backends.graph import STEP_KINDS

CANDIDATE, CURRENT, PREVIOUS, RETIRED = "candidate", "current", "previous", "retired"
STATES = (CANDIDATE, CURRENT, PREVIOUS, RETIRED)
LOADED = (CANDIDATE, CURRENT, PREVIOUS)
TRAFFIC_MODES = ("canary", "shadow")
STEP_NAMES = tuple(STEP_KINDS)


class ReleaseError(UsageError):
    """A release rule refused a change, or releases.json is unreadable."""


@dataclass(frozen=True)
class Release:
    release: int
    bundle: str
    fingerprint: str
    calibration_version: str
    steps: Mapping[str, int]
    state: str = CANDIDATE
    model_fingerprint: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.release, bool) or not isinstance(self.release, int) or self.release < 1:
            raise ReleaseError(f"a release number is an integer >= 1, got {self.release!r}")
        if set(self.steps) != set(STEP_NAMES) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in self.steps.values()):
            raise ReleaseError(f"release {self.release}: steps must give a version >= 1 of each of "
                               f"{list(STEP_NAMES)}, got {dict(self.steps)}")
        if self.state not in STATES:
            raise ReleaseError(f"release {self.release}: state {self.state!r} is not one of {list(STATES)}")
        object.__setattr__(self, "steps", {name: int(self.steps[name]) for name in STEP_NAMES})

    @property
    def loaded(self) -> bool:
        return self.state in LOADED

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "bundle": self.bundle, "fingerprint": self.fingerprint,
                "calibration_version": self.calibration_version, "model_fingerprint": self.model_fingerprint,
                "steps": dict(self.steps), "state": self.state}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Release":
        return cls(release=data["release"], bundle=str(data.get("bundle", "")),
                   fingerprint=str(data.get("fingerprint", "")),
                   calibration_version=str(data.get("calibration_version", "")),
                   steps=dict(data["steps"]), state=str(data.get("state", CANDIDATE)),
                   model_fingerprint=str(data.get("model_fingerprint", "")))


@dataclass(frozen=True)
class Traffic:
    release: int
    share: float
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in TRAFFIC_MODES:
            raise ReleaseError(f"traffic mode must be one of {list(TRAFFIC_MODES)}, got {self.mode!r}")
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise ReleaseError(f"traffic share must be in (0, 1], got {self.share!r}")
        object.__setattr__(self, "share", float(self.share))

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "share": self.share, "mode": self.mode}


@dataclass(frozen=True)
class Releases:
    ensemble: str
    current: int | None
    previous: int | None = None
    releases: tuple[Release, ...] = ()
    traffic: Traffic | None = field(default=None)

    def __post_init__(self) -> None:
        numbers = [r.release for r in self.releases]
        if len(set(numbers)) != len(numbers):
            raise ReleaseError(f"release numbers appear twice: {numbers}")
        for pointer, state in ((self.current, CURRENT), (self.previous, PREVIOUS)):
            holders = [r.release for r in self.releases if r.state == state]
            if holders != ([pointer] if pointer is not None else []):
                raise ReleaseError(f"'{state}' is {pointer} but the releases in state {state} are {holders}")
        if self.traffic is not None and self.traffic.release not in [r.release for r in self.candidates]:
            raise ReleaseError(f"traffic names release {self.traffic.release}, which is not a candidate")

    # -- reading -------------------------------------------------------------------
    def get(self, number: int) -> Release:
        for release in self.releases:
            if release.release == number:
                return release
        known = ", ".join(str(r.release) for r in self.releases) or "none"
        raise ReleaseError(f"no release {number} in this repository (releases: {known})")

    @property
    def loaded(self) -> tuple[Release, ...]:
        return tuple(r for r in self.releases if r.loaded)

    @property
    def candidates(self) -> tuple[Release, ...]:
        return tuple(r for r in self.releases if r.state == CANDIDATE)

    def versions(self, step: str) -> tuple[int, ...]:
        """The versions of ``step`` that loaded releases pin: what its version_policy lists."""
        return tuple(sorted({r.steps[step] for r in self.loaded}))

    def used_versions(self, step: str) -> set[int]:
        """Versions of ``step`` any release ever pinned (never reused for another release)."""
        return {r.steps[step] for r in self.releases}

    def next_number(self) -> int:
        return max((r.release for r in self.releases), default=0) + 1

    # -- rules: each returns the new state ---------------------------------------------
    def _with(self, changed: Mapping[int, str], **pointers: Any) -> "Releases":
        releases = tuple(replace(r, state=changed.get(r.release, r.state)) for r in self.releases)
        traffic = pointers.pop("traffic", self.traffic)
        if traffic is not None and changed.get(traffic.release, CANDIDATE) != CANDIDATE:
            traffic = None  # its release is no longer a candidate
        return replace(self, releases=releases, traffic=traffic, **pointers)

    def added(self, release: Release) -> "Releases":
        """``release`` as a new candidate."""
        if release.release in [r.release for r in self.releases]:
            raise ReleaseError(f"release {release.release} already exists")
        return replace(self, releases=(*self.releases, replace(release, state=CANDIDATE)))

    def promoted(self, number: int | None = None) -> tuple["Releases", Release | None]:
        """Release ``number`` (default: the newest candidate) becomes current, the current one
        previous. Returns the new state and the release displaced from ``previous`` (it is
        retired: unloaded and removed), if any."""
        if number is None:
            if not self.candidates:
                raise ReleaseError("no candidate release to promote: add one (tce release add) or name a release")
            number = self.candidates[-1].release
        target = self.get(number)
        if target.state == CURRENT:
            raise ReleaseError(f"release {number} is already current")
        if not target.loaded:
            raise ReleaseError(f"release {number} is retired: add its bundle again (tce release add)")
        changed = {number: CURRENT}
        if self.current is not None:
            changed[self.current] = PREVIOUS
        displaced = None
        if self.previous is not None and self.previous != number:
            changed[self.previous] = RETIRED
            displaced = self.get(self.previous)
        return self._with(changed, current=number, previous=self.current), displaced

    def rolled_back(self) -> "Releases":
        """The previous release becomes current again and the current one previous (so a
        second rollback undoes the first)."""
        if self.previous is None:
            raise ReleaseError("there is no previous release to roll back to")
        assert self.current is not None
        return self._with({self.previous: CURRENT, self.current: PREVIOUS}, current=self.previous,
                          previous=self.current)

    def retired(self, number: int) -> "Releases":
        target = self.get(number)
        if target.state in (CURRENT, PREVIOUS):
            raise ReleaseError(f"release {number} is {target.state}: only a release that is neither current nor "
                               "previous can be retired (promote or roll back first)")
        if target.state == RETIRED:
            raise ReleaseError(f"release {number} is already retired")
        return self._with({number: RETIRED})

    def without(self, number: int) -> "Releases":
        """The state before release ``number`` was added (an add that failed)."""
        return replace(self, releases=tuple(r for r in self.releases if r.release != number),
                       traffic=None if self.traffic and self.traffic.release == number else self.traffic)

    def with_traffic(self, traffic: Traffic | None) -> "Releases":
        if traffic is not None:
            target = self.get(traffic.release)
            if target.state != CANDIDATE:
                raise ReleaseError(f"traffic goes to a loaded candidate; release {traffic.release} is "
                                   f"{target.state}")
        return replace(self, traffic=traffic)

    # -- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble, "current": self.current, "previous": self.previous,
                "releases": [r.to_dict() for r in self.releases],
                "traffic": self.traffic.to_dict() if self.traffic else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Releases":
        traffic = data.get("traffic")
        return cls(ensemble=str(data["ensemble"]), current=data.get("current"), previous=data.get("previous"),
                   releases=tuple(Release.from_dict(r) for r in data.get("releases", [])),
                   traffic=Traffic(traffic["release"], traffic["share"], traffic["mode"]) if traffic else None)

    @classmethod
    def load(cls, repository: Path | str) -> "Releases":
        path = Path(repository) / RELEASES_FILE
        if not path.is_file():
            raise ReleaseError(f"{repository} has no {RELEASES_FILE}: it was not built by this version's tce build; "
                               "rebuild it (tce build BUNDLE --out REPOSITORY)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as error:
            if isinstance(error, ReleaseError):
                raise ReleaseError(f"{path}: {error}") from None
            raise ReleaseError(f"{path} is unreadable: {error!r}") from None

    @staticmethod
    def exists(repository: Path | str) -> bool:
        return (Path(repository) / RELEASES_FILE).is_file()

    def save(self, repository: Path | str) -> Path:
        """Write by staging and rename: readers see the old file or the new one, whole."""
        path = Path(repository) / RELEASES_FILE
        staging = path.with_name(f".{RELEASES_FILE}.staging-{os.getpid()}")
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.to_dict(), indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
        return path


def first_release(ensemble: str, bundle: str, fingerprint: str, calibration_version: str, model_fingerprint: str,
                  version: int = 1) -> Releases:
    """What ``tce build`` writes: one release, current."""
    release = Release(1, bundle, fingerprint, calibration_version, {step: version for step in STEP_NAMES},
                      CURRENT, model_fingerprint)
    return Releases(ensemble, current=1, releases=(release,))


def format_table(releases: Releases) -> str:
    """``tce release list``: one line per release."""
    rows = [("release", "state", "bundle", "fingerprint", "calibration version", "steps (pre/model/cal)")]
    for r in releases.releases:
        marker = ""
        if releases.traffic is not None and releases.traffic.release == r.release:
            marker = f" ({releases.traffic.mode} {releases.traffic.share:g})"
        rows.append((str(r.release), r.state + marker, r.bundle, r.fingerprint[:12], r.calibration_version,
                     "/".join(str(r.steps[s]) for s in STEP_NAMES)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([f"ensemble {releases.ensemble}: current {releases.current}, previous {releases.previous}",
                      *lines])
