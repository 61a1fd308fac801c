"""``tce calibrate``: fit, apply, report and publish calibration.

Prediction files (CSV/TSV/Parquet) follow ``tce_client.columns``;
``--label TASK=COLUMN`` overrides a true-label column. ``apply`` runs exactly the
server's ``Calibrator`` and adds the calibrated columns, keeping every input column.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from tce.lib import plots
from tce.lib.calibration_metrics import TaskMetrics, metrics_table, task_metrics
from tce.lib.fitting import DEFAULT_POINTS, FitMethod, fit_task
from tce.lib.labels import ScoreColumns, label_column, score_columns, true_labels
from tce.lib.tables import read_frame, write_frame
from tce.repository.builder import write_step_version
from tce.serving.security import http_headers
from tce_backends.bundle import CALIBRATION_DIR, MANIFEST_FILE, Bundle, Manifest
from tce_backends.calibration import CALIBRATION_FILE, CalibratedBatch, Calibrator
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec
from tce_client.columns import (
    VERSION_COLUMN,
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
    calibrator = Calibrator(all_tasks, calibrations, label=label)
    target = bundle.root / CALIBRATION_DIR
    if target.exists():
        shutil.rmtree(target)
    calibrator.save(target)
    return calibrator


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
    """Add calibrated columns and ``calibration_version``; columns of an earlier
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


# -- publish: a new calibrator version, live -----------------------------------

def publish(bundle_dir: Path, repository: Path, url: str | None = None, admin_key: str | None = None,
            timeout_s: float = 120.0) -> int:
    """Write the bundle's calibration as the next ``calibrator`` version and, with
    ``url``, ask a server in explicit model-control mode to load it (sending the admin
    key). Triton keeps serving the old version until the new one is ready, then
    retires it.

    Nothing is written unless the bundle's tasks and classes equal the served ones,
    every table maps into [0, 1] and (with ``url``) the server accepts model control
    with this key. A version the server fails to load is removed again, so the next
    start of the server is not broken by it.
    """
    from tce_backends import graph

    bundle = Bundle.load(bundle_dir)  # strict: a table outside [0, 1] or outside the bundle is refused here
    _check_complete(bundle)
    step_dir = Path(repository) / graph.CALIBRATOR
    versions = sorted(int(p.name) for p in step_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if (step_dir / "config.pbtxt").is_file() else []
    if not versions:
        raise UsageError(f"{repository} has no {graph.CALIBRATOR} model; build the repository first")
    _check_same_tasks(bundle.manifest, Manifest.load(step_dir / str(versions[-1])), step_dir / str(versions[-1]))
    client = _model_control_client(url, admin_key, timeout_s) if url else None
    version = versions[-1] + 1
    staging = step_dir / f".staging-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    write_step_version(bundle, graph.CALIBRATOR, staging)
    staging.rename(step_dir / str(version))  # appears whole: the server never sees a half-written version
    if client is not None:
        from tritonclient.utils import InferenceServerException

        try:
            client.load_model(graph.CALIBRATOR, headers=http_headers(admin_key))
            ready = client.is_model_ready(graph.CALIBRATOR, str(version))
            problem = "" if ready else "it did not become ready"
        except InferenceServerException as error:
            problem = error.message()
        if problem:
            shutil.rmtree(step_dir / str(version), ignore_errors=True)
            raise UsageError(f"the server did not load calibrator version {version} ({problem}); "
                             "the version was removed again, the old one keeps serving")
    return version


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


def _model_control_client(url: str, admin_key: str | None, timeout_s: float):
    """An HTTP client to a server that accepts model control with ``admin_key``;
    asked before anything is written."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from tce_client.endpoints import host_port

    client = httpclient.InferenceServerClient(host_port(url, "http"), network_timeout=timeout_s,
                                              connection_timeout=min(timeout_s, 10.0))
    try:
        # Unloading a model that does not exist changes nothing, yet needs explicit model control and the key.
        client.unload_model("__tce_model_control_probe__", headers=http_headers(admin_key))
    except InferenceServerException as error:
        message = error.message() or str(error)
        if "restricted" in message:
            raise UsageError(f"the server at {url} refused the admin key ({message}); pass the key it was "
                             "started with (--admin-key-file or $TCE_ADMIN_KEY)") from None
        if "polling is enabled" in message or "not allowed" in message:
            raise UsageError(f"the server at {url} does not allow model control: start it with "
                             "--model-control-mode explicit --load-model '*'") from None
        raise UsageError(f"the server at {url} cannot load models: {message}") from None
    except Exception as error:  # noqa: BLE001 - connection failures differ by library version
        raise UsageError(f"no Triton server answers at {url} ({error})") from None
    return client
