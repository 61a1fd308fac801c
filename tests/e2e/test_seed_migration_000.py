"""Seed 000's user, migrated: the inference handler's answers and its calibration rules.

The consumer below is written from seed 000's document only. Its ``output_fn`` answers
``{"predictions": [...]}``: for a binary model ``legacy-score`` (raw class-1 probability),
``calibrated-score`` and ``output-label`` (``class-<argmax>``), as strings; for a multiclass
model ``prob_01``.. and ``calibrated_prob_01``.. plus ``output-label``. Its test cases: with
calibration, the calibrated score is the table's; a corrupted calibration file falls back to
raw scores; no ``calibration/`` returns the raw scores as both. The project's handler for this
is the packaged PyTorch one (``tce package-sagemaker --handler pytorch``), run here as a model
server runs it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tce.lib.demo_data import make_dataset
from tests.e2e.test_seed_migration_003 import JSON, json_body, pytorch_container, tce, unpack

pytestmark = pytest.mark.e2e


# --- the seed user's consumer (seed 000: output_fn's JSON) ---------------------------------------------------------

def binary_answers(body: bytes) -> list[tuple[float, float, str]]:
    return [(float(p["legacy-score"]), float(p["calibrated-score"]), p["output-label"])
            for p in json.loads(body)["predictions"]]


def multiclass_answers(body: bytes) -> list[tuple[list[float], list[float], str]]:
    answers = []
    for p in json.loads(body)["predictions"]:
        classes = sorted(k for k in p if k.startswith("prob_"))
        answers.append(([float(p[k]) for k in classes], [float(p[f"calibrated_{k}"]) for k in classes],
                        p["output-label"]))
    return answers


# --- the project's handler, packaged -------------------------------------------------------------------------------

def records(rows: int = 6) -> list[dict]:
    frame = make_dataset(rows, seed=5).drop(columns=["abuse", "reason", "events", "record_id"])
    return json.loads(frame.to_json(orient="records"))


def packaged(bundle_root: Path, into: Path) -> Path:
    tce("package-sagemaker", str(bundle_root), str(into.with_suffix(".tar.gz")), "--handler", "pytorch")
    return unpack(into.with_suffix(".tar.gz"), into)


def answer(model_dir: Path, body: bytes) -> bytes:
    ((response, content_type),) = pytorch_container(model_dir, [(body, JSON, JSON)])
    assert content_type.startswith(JSON)
    return response


def calibration_dir(model_dir: Path) -> Path:
    (found,) = [p.parent for p in model_dir.rglob("calibration.json")]
    return found


def test_binary_answers_and_the_seeds_calibration_cases(binary_bundle, tmp_path):
    body = json_body(records())
    model_dir = packaged(binary_bundle.root, tmp_path / "calibrated")
    calibrated = binary_answers(answer(model_dir, body))
    assert len(calibrated) == 6
    assert {label for _, _, label in calibrated} <= {"class-0", "class-1"}
    assert all(label == f"class-{int(raw >= 0.5)}" for raw, _, label in calibrated)  # argmax of raw
    assert any(abs(raw - cal) > 1e-6 for raw, cal, _ in calibrated)  # the table moved the scores

    corrupted = shutil.copytree(model_dir, tmp_path / "corrupted")
    for table in calibration_dir(corrupted).iterdir():
        table.write_bytes(b"\x00 not a calibration")
    fallback = binary_answers(answer(corrupted, body))
    assert [(raw, raw, label) for raw, _, label in calibrated] == [(raw, cal, label) for raw, cal, label in fallback]

    without = shutil.copytree(model_dir, tmp_path / "without")
    shutil.rmtree(calibration_dir(without))
    raw_only = binary_answers(answer(without, body))
    assert [(raw, raw, label) for raw, _, label in calibrated] == raw_only


def test_multiclass_answers_are_per_class_and_normalised(multiclass_bundle, tmp_path):
    model_dir = packaged(multiclass_bundle.root, tmp_path / "multiclass")
    answers = multiclass_answers(answer(model_dir, json_body(records())))
    assert len(answers) == 6
    for raw, calibrated, label in answers:
        assert len(raw) == len(calibrated) >= 3
        assert label == f"class-{int(np.argmax(raw))}"
        assert abs(sum(calibrated) - 1.0) < 1e-5  # per-class tables, then normalised
