"""``tce release add | promote | rollback | retire | list | traffic``: releases of one repository.

Each command changes the repository's files under its lock (``repository_lock``) and, with
a server URL and its admin key, the server (explicit model control):

- ``add``: the bundle's steps as new versions, the per-release ensemble, a candidate; the
  server loads it beside the current release, and the canary checks it (the ensemble
  answers plausibly, and answers as the bundle's reference pipeline on sample records,
  within 1e-5). Any failure removes what was written and unloads what was loaded.
- ``promote``: the ensemble pins the release; reloading it switches new requests at once,
  requests in flight finish on the versions they started with. The release it displaces
  from ``previous`` is retired (the previous one stays loaded: rollback is instant).
- ``rollback``: current and previous swap.
- ``retire``: a release neither current nor previous is unloaded and removed.
- ``traffic``: which candidate gets a share of the gateway's requests (the gateway reads it).

``publish_calibration`` (``tce calibrate publish``) is ``add`` for new tables of the current
model: one new calibrator version beside the current release's preprocessor and model.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tce.jobs.model_control import ModelControl
from tce.lib.staging import LOCK_TIMEOUT_S, repository_lock
from tce.repository.builder import calibration_problem
from tce.repository.release_files import (
    add_release,
    check_contract,
    pin_current,
    remove_release,
    undo_add,
)
from tce.repository.releases import STEP_NAMES, Release, Releases, Traffic
from tce_backends.bundle import Bundle
from tce_backends.canary import Canary
from tce_backends.contract import release_model_name
from tce_backends.errors import UsageError
from tce_backends.graph import MULTIMODAL_MODEL, PREPROCESSOR
from tce_backends.reference import ReferencePipeline

TOLERANCE = 1e-5
Say = Callable[[str], None]


@dataclass(frozen=True)
class Server:
    """Where the repository is served; ``url`` None: change the files only."""

    url: str | None = None
    admin_key: str | None = None
    timeout_s: float = 120.0

    @contextlib.contextmanager
    def control(self) -> Iterator[ModelControl | None]:
        if self.url is None:
            yield None
            return
        with ModelControl(self.url, self.admin_key, self.timeout_s) as control:
            yield control


@dataclass(frozen=True)
class Switch:
    """What a promote or rollback did, and how long the server took to switch."""

    current: Release
    previous: Release | None
    retired: Release | None = None
    switch_s: float | None = None  # the ensemble's reload; None without a server
    notes: tuple[str, ...] = field(default=())


def _lock(repository: Path, command: str, timeout_s: float) -> contextlib.AbstractContextManager:
    return repository_lock(repository, timeout_s, command=command)


# -- checking a loaded release against its reference ------------------------------------

def sample_records(bundle: Bundle) -> list[dict[str, Any]]:
    """Records that walk the bundle's preprocessing: texts short, long and empty; numbers at
    their imputation values, scaled, zero and missing; categories known, unseen and missing."""
    tabular = bundle.tabular
    texts = ["buyer: my package never arrived, seller: it was shipped", "", "hello " * 300,
             "ünïcödé ✓ <b>html</b> &amp; 😀", "refund please " * 3]
    records = []
    for index, text in enumerate(texts):
        record: dict[str, Any] = {field: text for field in bundle.manifest.text_fields}
        for name, value in tabular.imputation.items():
            record[name] = (value * (1 + 0.5 * index), 0.0, None, -value, value)[index]
        for name, table in tabular.risk_tables.items():
            keys = sorted(table.bins)
            record[name] = keys[index % len(keys)] if keys and index % 3 != 2 else ("" if index == 2 else "unseen")
        records.append(record)
    return records


def check_served(url: str, ensemble: str, release: Release, reference: ReferencePipeline,
                 records: Sequence[dict[str, Any]]) -> None:
    """The served release answers the canary, and answers ``records`` as ``reference`` does
    (raw and calibrated within 1e-5, the same decisions and calibration version, its release
    number); else one ``UsageError`` line saying what differs."""
    model = release_model_name(ensemble, release.release)
    problem = Canary(url, model).probe()
    if problem:
        raise UsageError(f"release {release.release} failed the canary: {problem}")
    from tce_client import CalibratedClassifierClient

    with CalibratedClassifierClient(url, "http", model=ensemble, release=release.release) as client:
        schema = client.schema
        assert schema is not None
        inputs = schema.encode(list(records), allow_missing_fields=True)
        served = client.infer_arrays(inputs)
    expected = reference.predict(inputs)
    for row, prediction in enumerate(served):
        if prediction.release != str(release.release):
            raise UsageError(f"release {release.release} answered as release {prediction.release!r}")
        if prediction.calibration_version != release.calibration_version:
            raise UsageError(f"release {release.release} answered with calibration version "
                             f"{prediction.calibration_version}, its bundle's is {release.calibration_version}")
        for task in schema.tasks:
            for part in ("raw", "calibrated"):
                want = expected[task.outputs[part]][row]
                got = getattr(prediction[task.name], part)
                gap = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
                if not gap <= TOLERANCE:
                    raise UsageError(f"release {release.release} answers record {row} differently from its bundle's "
                                     f"reference pipeline: task {task.name!r} {part} differs by {gap:.3g} "
                                     f"(more than {TOLERANCE:g})")
            if "decision" in task.outputs:
                want_decision = expected[task.outputs["decision"]][row, 0].decode()
                if prediction[task.name].decision != want_decision:
                    raise UsageError(f"release {release.release} decides record {row} of task {task.name!r} as "
                                     f"{prediction[task.name].decision!r}, its bundle's reference pipeline as "
                                     f"{want_decision!r}")


# -- the server side of a release --------------------------------------------------------

def _load_release(control: ModelControl, ensemble: str, release: Release, changed_steps: Sequence[str]) -> None:
    for step in changed_steps:
        control.load(step, versions=(release.steps[step],))
    control.load(release_model_name(ensemble, release.release))


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        action()


def _undo_on_server(control: ModelControl | None, ensemble: str, release: Release,
                    changed_steps: Sequence[str]) -> None:
    if control is None:
        return
    _quietly(lambda: control.unload(release_model_name(ensemble, release.release)))
    for step in changed_steps:  # the policies no longer list the version: a reload drops it
        _quietly(lambda step=step: control.load(step))


def _add_checked(repository: Path, releases: Releases, bundle: Bundle, server: Server, reference_of: Callable[
        [Release], ReferencePipeline], records: Sequence[dict[str, Any]], base: Release | None, say: Say) -> Releases:
    """Write, load and check a candidate; on any failure leave files and server as they were."""
    with server.control() as control:  # asks the server before anything is written
        new, added = add_release(repository, releases, bundle, base=base, say=say)
        release = added.release
        changed = [s for s in STEP_NAMES if base is None or release.steps[s] != base.steps[s]]
        try:
            if control is not None:
                _load_release(control, releases.ensemble, release, changed)
                assert server.url is not None
                check_served(server.url, releases.ensemble, release, reference_of(release), records)
        except BaseException as error:
            undo_add(repository, releases, added)
            _undo_on_server(control, releases.ensemble, release, changed)
            if isinstance(error, UsageError):
                raise UsageError(f"{error}; release {release.release} was removed again, the repository and the "
                                 "server are as they were") from None
            raise
    return new


def add(bundle_dir: Path | str, repository: Path | str, server: Server = Server(),
        records: Sequence[dict[str, Any]] | None = None, say: Say = lambda _: None,
        lock_timeout_s: float = LOCK_TIMEOUT_S) -> Release:
    """Add a bundle as the next release, a candidate (see the module's docstring)."""
    from tce.models.model_check import check_bundle_model

    repository = Path(repository)
    bundle = Bundle.load(bundle_dir)
    check_bundle_model(bundle)
    calibration_problem(bundle)
    with _lock(repository, f"tce release add {bundle.root}", lock_timeout_s):
        releases = Releases.load(repository)
        check_contract(repository, releases.ensemble, bundle)
        new = _add_checked(repository, releases, bundle, server, lambda _: ReferencePipeline(bundle),
                           records or sample_records(bundle), None, say)
    return new.get(new.next_number() - 1)


def publish_calibration(bundle: Bundle, repository: Path | str, server: Server = Server(), promote_now: bool = True,
                        say: Say = lambda _: None, lock_timeout_s: float = LOCK_TIMEOUT_S,
                        check: Callable[[Releases, Release], None] = lambda *_: None) -> tuple[Release, Switch | None]:
    """The bundle's calibration as a release of the current model: a new calibrator version
    beside the current release's preprocessor and model, checked like ``add``; promoted at
    once unless ``promote_now`` is False. ``check(releases, current)`` may refuse first."""
    repository = Path(repository)
    with _lock(repository, f"tce calibrate publish {bundle.root}", lock_timeout_s):
        releases = Releases.load(repository)
        if releases.current is None:
            raise UsageError(f"{repository} has no current release to publish calibration for")
        current = releases.get(releases.current)
        check(releases, current)
        fitted_for = bundle.calibrator.model_fingerprint
        if fitted_for and current.model_fingerprint and fitted_for != current.model_fingerprint:
            raise UsageError(f"the calibration in {bundle.root} was fitted for model {fitted_for}, the current release "
                             f"{current.release} serves model {current.model_fingerprint}: fit it on predictions of "
                             "the served model, or add the bundle as a release of its own (tce release add)")
        if not fitted_for:
            say("note: the calibration records no model fingerprint (fitted before it was recorded): accepted as "
                f"fitted for the current release's model {current.model_fingerprint or '(unknown)'}")

        def reference(release: Release) -> ReferencePipeline:
            return ReferencePipeline(bundle, roots={PREPROCESSOR: repository / PREPROCESSOR / str(
                release.steps[PREPROCESSOR]), MULTIMODAL_MODEL: repository / MULTIMODAL_MODEL / str(
                release.steps[MULTIMODAL_MODEL])})

        new = _add_checked(repository, releases, bundle, server, reference, sample_records(bundle), current, say)
        release = new.get(new.next_number() - 1)
        switch = _switch(repository, new, release.release, server, rollback=False) if promote_now else None
    return release, switch


# -- switching ------------------------------------------------------------------------------

def _ensure_loaded(control: ModelControl, ensemble: str, release: Release) -> None:
    """A release written without a server (or before a restart) is loaded before it serves."""
    if control.ready(release_model_name(ensemble, release.release)):
        return
    for step in STEP_NAMES:
        if not control.ready(step, release.steps[step]):
            control.load(step, versions=(release.steps[step],))
    control.load(release_model_name(ensemble, release.release))


def _switch(repository: Path, releases: Releases, number: int | None, server: Server, rollback: bool) -> Switch:
    """Pin the ensemble to another release (promote ``number``, or roll back), in files and server."""
    new, displaced = (releases.rolled_back(), None) if rollback else releases.promoted(number)
    assert new.current is not None
    target, old = new.get(new.current), releases.get(releases.current) if releases.current else None
    switch_s = None
    with server.control() as control:
        if control is not None:
            _ensure_loaded(control, new.ensemble, target)
        pin_current(repository, new.ensemble, target)
        if control is not None:
            try:
                switch_s = control.load(new.ensemble)
            except BaseException:
                if old is not None:
                    pin_current(repository, new.ensemble, old)
                    _quietly(lambda: control.load(new.ensemble))
                raise
        new.save(repository)
        if displaced is not None:
            _remove(repository, new, displaced, control)
    return Switch(target, new.get(new.previous) if new.previous else None, displaced, switch_s)


def _remove(repository: Path, releases: Releases, release: Release, control: ModelControl | None) -> None:
    """Unload and remove a release ``releases`` (already saved) no longer loads."""
    if control is not None:
        _quietly(lambda: control.unload(release_model_name(releases.ensemble, release.release)))
    remove_release(repository, releases, release)
    if control is not None:
        for step in STEP_NAMES:
            if release.steps[step] not in releases.versions(step):
                control.load(step)


def promote(repository: Path | str, number: int | None = None, server: Server = Server(),
            lock_timeout_s: float = LOCK_TIMEOUT_S) -> Switch:
    repository = Path(repository)
    with _lock(repository, "tce release promote", lock_timeout_s):
        return _switch(repository, Releases.load(repository), number, server, rollback=False)


def rollback(repository: Path | str, server: Server = Server(), lock_timeout_s: float = LOCK_TIMEOUT_S) -> Switch:
    repository = Path(repository)
    with _lock(repository, "tce release rollback", lock_timeout_s):
        return _switch(repository, Releases.load(repository), None, server, rollback=True)


def retire(repository: Path | str, number: int, server: Server = Server(),
           lock_timeout_s: float = LOCK_TIMEOUT_S) -> Release:
    repository = Path(repository)
    with _lock(repository, f"tce release retire {number}", lock_timeout_s):
        releases = Releases.load(repository)
        new = releases.retired(number)
        with server.control() as control:
            new.save(repository)
            _remove(repository, new, releases.get(number), control)
    return new.get(number)


def set_traffic(repository: Path | str, number: int | None, share: float = 0.0, mode: str = "canary",
                lock_timeout_s: float = LOCK_TIMEOUT_S) -> Releases:
    """``number`` None: no traffic split. Written to releases.json for the gateway to read."""
    repository = Path(repository)
    if number is not None and not (isinstance(share, (int, float)) and math.isfinite(share)):
        raise UsageError(f"--share must be a number in (0, 1], got {share!r}")
    with _lock(repository, "tce release traffic", lock_timeout_s):
        releases = Releases.load(repository)
        new = releases.with_traffic(Traffic(number, share, mode) if number is not None else None)
        new.save(repository)
    return new

