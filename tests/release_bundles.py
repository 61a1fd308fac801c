"""A second bundle for release tests: the same contract as a served one, other weights and
other calibration tables (recorded as fitted for its own model)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from tce_backends.bundle import Bundle, file_fingerprint
from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tce_backends.tasks import TaskSpec

# Monotone, inside [0, 1], and clearly not the identity.
STEEPER = LookupTable.from_points([(0.0, 0.0), (0.3, 0.1), (0.6, 0.5), (0.9, 0.95), (1.0, 1.0)])


def _calibration(task: TaskSpec) -> TaskCalibration:
    if task.kind == "binary":
        return TaskCalibration.of("binary", {1: STEEPER})
    return TaskCalibration.of("multiclass", dict.fromkeys(range(task.num_classes), STEEPER))


def variant_bundle(source: Bundle, out: Path, scale: float = 0.05, seed: int = 1, label: str = "b") -> Bundle:
    """``source`` with every model weight moved by Gaussian noise and new calibration tables."""
    shutil.copytree(source.root, out)
    model = torch.jit.load(str(out / "model.pt"), map_location="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    torch.jit.save(model, str(out / "model.pt"))
    tasks = source.manifest.tasks
    Calibrator(tasks, {task.name: _calibration(task) for task in tasks}, label=label).save(
        out / "calibration", model_fingerprint=file_fingerprint(out / "model.pt"))
    bundle = Bundle.load(out)
    assert bundle.model_fingerprint() != source.model_fingerprint()
    assert bundle.calibrator.version != source.calibrator.version
    return bundle


def recalibrated_bundle(source: Bundle, out: Path, label: str) -> Bundle:
    """``source``'s model with new tables (fitted for that model): what ``tce calibrate publish`` takes."""
    shutil.copytree(source.root, out)
    tasks = source.manifest.tasks
    bend = LookupTable.from_points([(0.0, 0.0), (0.5, float(np.float64(0.4))), (1.0, 1.0)])
    calibrations = {t.name: TaskCalibration.of("binary", {1: bend}) if t.kind == "binary"
                    else TaskCalibration.of("multiclass", dict.fromkeys(range(t.num_classes), bend)) for t in tasks}
    shutil.rmtree(out / "calibration")
    Calibrator(tasks, calibrations, label=label).save(out / "calibration", model_fingerprint=source.model_fingerprint())
    return Bundle.load(out)
