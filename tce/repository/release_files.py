"""A repository's files as releases come and go (``tce release``, ``tce calibrate publish``).

Every write is whole or absent for a reader and a server:

- a new step version is claimed with ``mkdir`` (fails if another writer took the number),
  written into a hidden staging directory and renamed over the claim;
- a step serves only the versions its ``version_policy`` lists, and a config is replaced
  by rename, after the versions it lists are complete;
- ``releases.json`` is written last (``Releases.save``).

The callers hold the repository's lock (``tce.lib.staging.repository_lock``) around
each change; the ``mkdir`` claim keeps two writers apart even without it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from tritonclient.grpc import model_config_pb2 as pb

from tce.repository.builder import (
    LIBTORCH_CONFIG_NAME,
    STEP_ARTIFACTS,
    make_configs,
    pin_ensemble,
    prepare_model,
    publish_score_reference,
    read_config,
    release_info,
    render_config,
    set_versions,
    write_step_version,
)
from tce.repository.releases import CANDIDATE, STEP_NAMES, Release, Releases
from tce_backends.bundle import MODEL_FILE, Bundle
from tce_backends.contract import SCHEMA_PARAMETER, release_model_name
from tce_backends.errors import UsageError
from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL


@dataclass(frozen=True)
class Added:
    """What adding a release wrote, so that a failed add can be undone."""

    release: Release
    version_dirs: tuple[Path, ...]
    ensemble_dir: Path


def config_paths(repository: Path, step: str) -> tuple[Path, ...]:
    """A step's config files: config.pbtxt, and the model step's libtorch host."""
    paths = [repository / step / "config.pbtxt"]
    if step == MULTIMODAL_MODEL and (repository / step / "configs" / f"{LIBTORCH_CONFIG_NAME}.pbtxt").is_file():
        paths.append(repository / step / "configs" / f"{LIBTORCH_CONFIG_NAME}.pbtxt")
    return tuple(paths)


def replace_file(path: Path, text: str) -> None:
    """``path`` holds ``text``, by staging and rename."""
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


# -- the contract: a new release must fit the configs Triton holds per model ------------

def _tensors(config: pb.ModelConfig) -> tuple[list[str], list[str]]:
    def one(tensor: pb.ModelInput | pb.ModelOutput) -> str:
        return f"{tensor.name} {pb.DataType.Name(tensor.data_type)} {list(tensor.dims)}"
    return [one(t) for t in config.input], [one(t) for t in config.output]


def check_contract(repository: Path, ensemble: str, bundle: Bundle) -> None:
    """Refuse, in one line, a bundle whose steps would speak other tensors than the served
    configs (tasks, classes, features, text fields or text windows differ): Triton's config
    is per model, not per version, so every release of a repository shares it."""
    wanted = make_configs(bundle.manifest, bundle.text.fields)
    for step, config in ((s.name, s) for s in (wanted.preprocessor, wanted.model_python, wanted.calibrator)):
        served = read_config(repository / step / "config.pbtxt")
        for kind, have, want in zip(("inputs", "outputs"), _tensors(served), _tensors(config.to_proto()),
                                    strict=True):
            if have != want:
                first = next((f"{a!r} vs {b!r}" for a, b in zip(have, want, strict=False) if a != b),
                             f"{len(have)} vs {len(want)} tensors")
                raise UsageError(f"bundle '{bundle.manifest.name}' cannot be a release of {repository}: the "
                                 f"{step} {kind} differ ({first}): its tasks, classes, features or text fields "
                                 "are not the served ones; a different contract needs its own repository "
                                 "(tce build)")
    served_schema = read_config(repository / ensemble / "config.pbtxt").parameters[SCHEMA_PARAMETER].string_value
    if served_schema != wanted.ensemble.parameters[0][1]:
        raise UsageError(f"bundle '{bundle.manifest.name}' cannot be a release of {repository}: its schema (tasks, "
                         "classes, feature names and order) differs from the served one; a different contract needs "
                         "its own repository (tce build)")


# -- versions ------------------------------------------------------------------------

def claim_version(step_dir: Path, used: set[int]) -> int:
    """The next free version number of a step, taken with an exclusive ``mkdir``."""
    present = {int(p.name) for p in step_dir.iterdir() if p.name.isdigit()}
    version = max(present | used | {0}) + 1
    while True:
        try:
            os.mkdir(step_dir / str(version))
            return version
        except FileExistsError:  # another writer claimed it first
            version += 1


def fill_version(step_dir: Path, version: int, fill: Callable[[Path], None]) -> Path:
    """Write a claimed version aside, then rename it over its (empty) claim."""
    target = step_dir / str(version)
    staging = step_dir / f".{version}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fill(staging)
        os.rename(staging, target)  # replaces the empty claimed directory in one step
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_policies(repository: Path, releases: Releases, extra: Mapping[str, int] | None = None) -> None:
    """Each step's config lists the versions the loaded releases pin (and ``extra``)."""
    for step in STEP_NAMES:
        versions = {*releases.versions(step), *([extra[step]] if extra else [])}
        for path in config_paths(repository, step):
            config = read_config(path)
            if list(config.version_policy.specific.versions) != sorted(versions):
                replace_file(path, render_config(set_versions(config, sorted(versions))))


def write_release_ensemble(repository: Path, ensemble: str, release: Release) -> Path:
    """``<ensemble>-release-<n>``: the ensemble pinned to one release's step versions."""
    name = release_model_name(ensemble, release.release)
    target = repository / name
    staging = repository / f".{name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    (staging / "1" / ".gitkeep").touch()
    pinned = pin_ensemble(read_config(repository / ensemble / "config.pbtxt"), name, release.steps)
    publish_score_reference(pinned, repository / CALIBRATOR / str(release.steps[CALIBRATOR]))
    (staging / "config.pbtxt").write_text(render_config(pinned), encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging, target)
    return target


def pin_current(repository: Path, ensemble: str, release: Release) -> None:
    """The ensemble ``<ensemble>`` answers with ``release``."""
    path = repository / ensemble / "config.pbtxt"
    pinned = pin_ensemble(read_config(path), ensemble, release.steps)
    publish_score_reference(pinned, repository / CALIBRATOR / str(release.steps[CALIBRATOR]))
    replace_file(path, render_config(pinned))


def pinned_steps(repository: Path, ensemble: str) -> dict[str, int]:
    """The step versions the ensemble's config pins now."""
    config = read_config(repository / ensemble / "config.pbtxt")
    return {step.model_name: int(step.model_version) for step in config.ensemble_scheduling.step}


# -- adding and removing -------------------------------------------------------------------

def add_release(repository: Path, releases: Releases, bundle: Bundle, base: Release | None = None,
                say: Callable[[str], None] = lambda _: None) -> tuple[Releases, Added]:
    """Write ``bundle`` as the next release, a candidate: new versions of every step, or with
    ``base`` only a new calibrator version beside ``base``'s preprocessor and model (new
    tables for the same model). Returns the new state (already saved) and what was written."""
    number = releases.next_number()
    model_fingerprint = base.model_fingerprint if base is not None else bundle.model_fingerprint()
    info = release_info(number, bundle.manifest.name, model_fingerprint)
    steps = dict(base.steps) if base is not None else {}
    written: list[Path] = []
    try:
        for step in STEP_ARTIFACTS:
            if step in steps and step != CALIBRATOR:
                continue
            step_dir = repository / step
            version = claim_version(step_dir, releases.used_versions(step))
            written.append(step_dir / str(version))

            def fill(staging: Path, step: str = step) -> None:
                write_step_version(bundle, step, staging, info)
                if step == MULTIMODAL_MODEL:
                    prepare_model(bundle, staging / MODEL_FILE, say)

            fill_version(step_dir, version, fill)
            steps[step] = version
        release = Release(number, bundle.manifest.name, base.fingerprint if base is not None else bundle.fingerprint(),
                          bundle.calibrator.version, steps, CANDIDATE, model_fingerprint)
        write_policies(repository, releases, extra=release.steps)
        ensemble_dir = write_release_ensemble(repository, releases.ensemble, release)
        added = Added(release, tuple(written), ensemble_dir)
        new = releases.added(release)
        new.save(repository)
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(repository / release_model_name(releases.ensemble, number), ignore_errors=True)
        write_policies(repository, releases)
        raise
    return new, added


def undo_add(repository: Path, before: Releases, added: Added) -> None:
    """The files as they were before ``add_release``."""
    before.save(repository)
    shutil.rmtree(added.ensemble_dir, ignore_errors=True)
    write_policies(repository, before)
    for path in added.version_dirs:
        shutil.rmtree(path, ignore_errors=True)


def remove_release(repository: Path, releases: Releases, release: Release) -> list[Path]:
    """Remove a release that ``releases`` no longer loads: its ensemble, the step versions no
    loaded release pins, and those versions from the step configs. Returns what was removed."""
    removed = []
    ensemble_dir = repository / release_model_name(releases.ensemble, release.release)
    if ensemble_dir.exists():
        shutil.rmtree(ensemble_dir)
        removed.append(ensemble_dir)
    write_policies(repository, releases)
    for step, version in release.steps.items():
        if version not in releases.versions(step) and (repository / step / str(version)).exists():
            shutil.rmtree(repository / step / str(version))
            removed.append(repository / step / str(version))
    return removed

