"""``tce calibrate``: fit, apply, report and publish calibration.

Prediction files (CSV/TSV/Parquet) follow ``tce_client.columns``;
``--label TASK=COLUMN`` overrides a true-label column. ``apply`` runs exactly the
server's ``Calibrator`` and adds the calibrated columns, keeping every input column.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from tce.lib import plots
from tce.lib.calibration_metrics import TaskMetrics, metrics_table, task_metrics
from tce.lib.fitting import DEFAULT_POINTS, FitMethod, fit_task
from tce.lib.labels import ScoreColumns, label_column, score_columns, true_labels
from tce.lib.staging import LOCK_TIMEOUT_S, staged_directory
from tce.lib.tables import read_frame, write_frame
from tce_backends import graph
from tce_backends.bundle import CALIBRATION_DIR, MANIFEST_FILE, Bundle, Manifest
from tce_backends.calibration import CALIBRATION_FILE, CalibratedBatch, Calibrator
from tce_backends.errors import BundleError, UsageError
from tce_backends.score_metrics import ReferenceScores
from tce_backends.tasks import TaskSpec
from tce_client.columns import (
    VERSION_COLUMN,
    decision_column,
    single_task_class_index,
)

# -- fit ---------------------------------------------------------------------------

def fit(bundle_dir: Path, predictions: Path, method: FitMethod = "isotonic", points: int = DEFAULT_POINTS,
        tasks: Sequence[str] = (), labels: Mapping[str, str] | None = None, label: str = "") -> Calibrator:
    """Fit the chosen tasks (default: all) and write the bundle's calibration/."""
    bundle = Bundle.load(bundle_dir)
    frame = read_frame(predictions)
    all_tasks = bundle.manifest.tasks
    chosen = [t for t in all_tasks if not tasks or t.name in tasks]
    unknown = sorted(set(tasks) - {t.name for t in all_tasks})
    if unknown:
        raise UsageError(f"unknown tasks {unknown}; the bundle has {[t.name for t in all_tasks]}")
    calibrations = dict(bundle.calibrator.calibrations)
    by_task = {c.task.name: c for c in score_columns(chosen, frame, single=len(all_tasks) == 1)}
    for task in chosen:
        scores = by_task[task.name].matrix(frame)
        truth = true_labels(frame, task, label_column(task, all_tasks, labels or {}))
        calibrations[task.name] = fit_task(task, scores, truth, method, points)
    # A re-fit keeps the bundle's decision policy (tce calibrate thresholds chooses a new one).
    calibrator = Calibrator(all_tasks, calibrations, label=label, policy=bundle.calibrator.policy)
    reference = _reference_scores(bundle, frame, calibrator)
    # Written aside and swapped in whole (the manifest does not change): a failure or a kill
    # at any point leaves the bundle's calibration byte for byte as it was.
    try:
        with staged_directory(bundle.root / CALIBRATION_DIR) as staging:
            calibrator.save(staging, model_fingerprint=bundle.model_fingerprint())  # the model the tables are for
            if reference is not None:
                reference.save(staging)
    except OSError as error:
        raise UsageError(f"cannot write {bundle.root / CALIBRATION_DIR}: {error.strerror or error}; the bundle's "
                         "calibration was left as it was") from None
    return calibrator


def _reference_scores(bundle: Bundle, frame: pd.DataFrame, calibrator: Calibrator) -> ReferenceScores | None:
    """The drift reference the served calibrator compares live scores with: this file's scores,
    raw and as ``calibrator`` calibrates them, for every task it holds scores of; the bundle's
    earlier reference for the tasks it does not."""
    tasks = bundle.manifest.tasks
    raw = {}
    for task in tasks:
        try:
            raw[task.name] = score_columns([task], frame, single=len(tasks) == 1)[0].matrix(frame)
        except UsageError:
            continue
    try:
        earlier = ReferenceScores.load(bundle.root / CALIBRATION_DIR, tasks)
    except BundleError:
        earlier = None  # damaged: replaced by this file's
    if not raw:
        return earlier
    uniform = {t.name: np.full((len(frame), t.num_classes), 1.0 / t.num_classes) for t in tasks}
    applied = calibrator.apply(np.concatenate([raw.get(t.name, uniform[t.name]) for t in tasks], axis=1))
    try:
        new = ReferenceScores.of_calibrated({t: applied.raw[t] for t in raw}, {t: applied.calibrated[t] for t in raw})
    except ValueError as error:
        raise UsageError(f"cannot store the drift reference: {error}") from None
    return earlier.merged(new) if earlier is not None else new


# -- apply -------------------------------------------------------------------------

def load_calibration(directory: Path, frame: pd.DataFrame) -> tuple[Calibrator, list[ScoreColumns], list[str]]:
    """A bundle, a bundle's calibration/ or a seed calibration/ directory."""
    directory = Path(directory)
    if (directory / MANIFEST_FILE).is_file():
        tasks = Manifest.load(directory).tasks
        calibrator = Calibrator.load(directory / CALIBRATION_DIR, tasks, strict=True)
        return calibrator, score_columns(tasks, frame), []
    if (directory / CALIBRATION_FILE).is_file():
        raise UsageError(f"{directory} is a bundle's calibration/ directory: pass the bundle directory itself, "
                         "which names the tasks")
    from tce.seed.importer import SeedCalibration

    seed = SeedCalibration.read(directory)
    if not (seed.percentile or seed.binary or seed.per_class or seed.per_score_field):
        raise UsageError(f"{directory} holds no bundle and no seed calibration files")
    tasks = _seed_tasks(seed, frame)
    calibrations, notes = seed.for_tasks(tasks)
    notes += [f"unknown calibration file ignored: {u}" for u in seed.unknown]
    calibrator = Calibrator(tasks, calibrations)
    return calibrator, score_columns(tasks, frame), notes


def _seed_tasks(seed, frame: pd.DataFrame) -> tuple[TaskSpec, ...]:
    tasks = []
    for field in seed.per_score_field:
        if field not in frame:
            raise UsageError(f"calibration_model_{field}.pkl needs a score column {field!r} in the input")
        tasks.append(TaskSpec(field, "binary", ("0", "1")))
    if seed.percentile or seed.binary or seed.per_class:
        indices = sorted(i for c in frame.columns if (i := single_task_class_index(str(c))) is not None)
        if not indices or indices != list(range(len(indices))):
            raise UsageError("the input needs prob_class_0 .. prob_class_<k-1> columns for this calibration")
        kind = "binary" if len(indices) == 2 else "multiclass"
        tasks.append(TaskSpec("label", kind, tuple(str(i) for i in indices)))
    return tuple(tasks)


def _calibrate_file(calibration: Path, input_path: Path
                    ) -> tuple[pd.DataFrame, Calibrator, list[ScoreColumns], CalibratedBatch, list[str]]:
    """Read a predictions file and run the server's ``Calibrator`` on it, in float64
    (the server then sends float32)."""
    frame = read_frame(input_path)
    calibrator, columns, notes = load_calibration(calibration, frame)
    result = calibrator.apply(np.concatenate([c.matrix(frame) for c in columns], axis=1))
    return frame, calibrator, columns, result, notes


def apply(calibration: Path, input_path: Path, output_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Add calibrated columns and ``calibration_version`` (and ``<task>_decision`` where the
    calibration has a decision policy or the file a decision column); columns of an earlier
    calibration in the file are replaced, and the notes say so."""
    frame, calibrator, columns, result, notes = _calibrate_file(calibration, input_path)
    out = frame.copy()
    single = len(columns) == 1
    written: list[str] = []
    for column in columns:
        calibrated = result.calibrated[column.task.name]
        names = column.calibrated_columns(single)
        written += names
        if column.score_field:
            out[names[0]] = calibrated[:, 1]
        else:
            for index, name in enumerate(names):
                out[name] = calibrated[:, index]
        decision = decision_column(column.task.name)  # the policy's decisions, as the server takes them
        if decision in frame.columns or column.task.name in calibrator.policy.tasks:
            out[decision] = np.array(calibrator.actions[column.task.name], dtype=object)[
                result.decisions[column.task.name]]
            written.append(decision)
    replaced = [name for name in (*written, VERSION_COLUMN) if name in frame.columns]
    if replaced:
        earlier = sorted(set(frame[VERSION_COLUMN].astype(str))) if VERSION_COLUMN in frame else ["unknown"]
        notes.append(f"replaced the columns of an earlier calibration (version {', '.join(earlier)}): "
                     f"{', '.join(replaced)}")
    out[VERSION_COLUMN] = calibrator.version
    failed = result.fallback.any(axis=0)
    notes += [f"task {t.name!r}: {int(result.fallback[:, i].sum())} rows could not be calibrated"
              for i, t in enumerate(calibrator.tasks) if failed[i]]
    write_frame(out, output_path)
    return out, notes


# -- report ------------------------------------------------------------------------

def report(calibration: Path, input_path: Path, out_dir: Path, labels: Mapping[str, str] | None = None,
           bins: int = 15) -> dict[str, dict[str, TaskMetrics]]:
    """Raw vs calibrated ECE, MCE, Brier, log-loss per task, and reliability diagrams."""
    frame, calibrator, columns, applied, _ = _calibrate_file(calibration, input_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, TaskMetrics]] = {}
    for column in columns:
        task = column.task
        raw, calibrated = applied.raw[task.name], applied.calibrated[task.name]
        truth = true_labels(frame, task, label_column(task, calibrator.tasks, labels or {}))
        results[task.name] = {"raw": task_metrics(raw, truth, bins),
                              "calibrated": task_metrics(calibrated, truth, bins)}
        plots.reliability_diagram(plots.TaskScores(task.name, task.classes, truth,
                                                   {"raw": raw, "calibrated": calibrated}),
                                  out_dir / f"reliability_{task.name}.png", bins)
    summary = {t: {k: m.as_dict() for k, m in pair.items()} for t, pair in results.items()}
    (out_dir / "calibration_report.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return results


def format_report(results: Mapping[str, Mapping[str, TaskMetrics]]) -> str:
    return metrics_table(results, ("ece", "mce", "brier", "log_loss"))


# -- publish: a release of new tables for the current model -----------------------

def publish(bundle_dir: Path, repository: Path, url: str | None = None, admin_key: str | None = None,
            timeout_s: float = 120.0, promote: bool = True, say: Callable[[str], None] = lambda _: None,
            lock_timeout_s: float = LOCK_TIMEOUT_S) -> int:
    """Publish the bundle's calibration as a release of the current model: the next
    ``calibrator`` version, pinned beside the current release's preprocessor and model
    versions (``tce.jobs.release.publish_calibration``). With ``url``, a server in explicit
    model-control mode (sent the admin key) loads it beside the current release, the canary
    checks it against the reference pipeline, and (unless ``promote`` is False, which leaves
    a candidate for ``tce release promote``) the ensemble switches to it: requests in flight
    finish on the old tables, new ones get the new tables. Returns the calibrator version.

    Nothing is written unless the bundle's tasks and classes equal the served ones, every
    table maps into [0, 1], the tables were fitted for the served model (or record no model)
    and (with ``url``) the server accepts model control with this key. A version the server
    fails to load or that answers wrongly is removed again, so the served state is as before.
    Two publishes at once take turns on the repository's lock and claim distinct versions.
    """
    from tce.jobs.release import Server, publish_calibration
    from tce.repository.releases import Release, Releases

    bundle = Bundle.load(bundle_dir)  # strict: a table outside [0, 1] or outside the bundle is refused here
    _check_complete(bundle)
    repository = Path(repository)
    if not (repository / graph.CALIBRATOR / "config.pbtxt").is_file():
        raise UsageError(f"{repository} has no {graph.CALIBRATOR} model; build the repository first")

    def same_tasks(releases: Releases, current: Release) -> None:
        served = repository / graph.CALIBRATOR / str(current.steps[graph.CALIBRATOR])
        _check_same_tasks(bundle.manifest, Manifest.load(served), served)

    release, _ = publish_calibration(bundle, repository, Server(url, admin_key, timeout_s), promote_now=promote,
                                     say=say, lock_timeout_s=lock_timeout_s, check=same_tasks)
    return release.steps[graph.CALIBRATOR]


def _check_complete(bundle: Bundle) -> None:
    """Every class of every calibrated task has its table: a class left raw would be served
    as calibrated with no fallback flag."""
    calibrator = bundle.calibrator
    for task in calibrator.tasks:
        missing = calibrator.calibrations[task.name].uncovered_classes(task)
        if missing:
            names = [task.classes[c] for c in missing]
            raise UsageError(f"task {task.name!r}: the bundle's calibration has no table for classes {names}; "
                             "publish tables for every class (tce calibrate fit writes them)")


def _check_same_tasks(bundle: Manifest, served: Manifest, where: Path) -> None:
    served_tasks = {t.name: t for t in served.tasks}
    for task in bundle.tasks:
        other = served_tasks.get(task.name)
        if other is None:
            raise UsageError(f"the bundle's task {task.name!r} is not served (served tasks: {list(served_tasks)}, "
                             f"from {where})")
        if (task.kind, task.classes) != (other.kind, other.classes):
            raise UsageError(f"task {task.name!r}: the bundle has {task.kind} classes {list(task.classes)}, the "
                             f"served model {other.kind} classes {list(other.classes)}; publish calibration fitted "
                             "for the served model")
    missing = sorted(set(served_tasks) - {t.name for t in bundle.tasks})
    if missing:
        raise UsageError(f"the bundle lacks the served tasks {missing}")
