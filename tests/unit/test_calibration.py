import json

import numpy as np
import pytest

from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tce_backends.errors import BundleError
from tce_backends.tasks import TaskSpec
from tests import seed_reference as seed

BINARY = TaskSpec("abuse", "binary", ("no", "yes"))
MULTI = TaskSpec("reason", "multiclass", ("a", "b", "c"))
TABLE = [(0.2, 0.1), (0.4, 0.5), (0.4, 0.6), (0.8, 0.9)]


def test_interpolation_hand_computed():
    table = LookupTable.from_points(TABLE)
    raw = np.array([-1.0, 0.0, 0.2, 0.3, 0.4, 0.6, 0.8, 0.95, 2.0, np.nan])
    # clamp below; at x0; midpoint; duplicate x -> first segment (0.5); midpoint of last segment; clamp above
    expected = [0.1, 0.1, 0.1, 0.3, 0.5, 0.75, 0.9, 0.9, 0.9, 0.9]
    np.testing.assert_allclose(table(raw), expected, atol=1e-12)


def test_interpolation_matches_seed_on_random_scores():
    rng = np.random.default_rng(0)
    x = np.sort(np.round(rng.random(50), 2))  # rounding makes duplicate x values
    table = list(zip(x, np.sort(rng.random(50)), strict=True))
    raw = np.concatenate([rng.random(500), x, [-0.5, 1.5, 0.0, 1.0]])
    expected = [seed._interpolate_score(r, table) for r in raw]
    np.testing.assert_allclose(LookupTable.from_points(table)(raw), expected, atol=1e-12)


def test_single_point_table_is_constant():
    np.testing.assert_array_equal(LookupTable.from_points([(0.5, 0.7)])(np.array([0.0, 0.5, 1.0])), [0.7] * 3)


def test_binary_and_percentile_match_seed():
    scores = np.random.default_rng(1).dirichlet([1, 1], size=100)
    for method, reference in (("binary", seed.apply_regular_binary_calibration),
                              ("percentile", seed.apply_percentile_calibration)):
        ours = TaskCalibration.of(method, {1: LookupTable.from_points(TABLE)}).apply(scores)
        np.testing.assert_allclose(ours, reference(scores, TABLE), atol=1e-12)


def test_multiclass_matches_seed_with_renormalisation_and_missing_class_table():
    scores = np.random.default_rng(2).dirichlet([1, 1, 1], size=100)
    tables = {"0": TABLE, "2": [(0.0, 0.2), (1.0, 0.4)]}
    per_class = {int(k): LookupTable.from_points(v) for k, v in tables.items()}
    ours = TaskCalibration.of("multiclass", per_class).apply(scores)
    np.testing.assert_allclose(ours, seed.apply_regular_multiclass_calibration(scores, tables), atol=1e-12)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0)


def test_task_without_calibration_passes_raw_through():
    calibrator = Calibrator([BINARY, MULTI], {})
    probs = np.array([[0.3, 0.7, 0.2, 0.3, 0.5]], dtype=np.float32)
    out = calibrator.apply(probs)
    np.testing.assert_array_equal(out.calibrated["abuse"], probs[:, :2])
    np.testing.assert_array_equal(out.calibrated["reason"], probs[:, 2:])
    assert out.labels["abuse"].tolist() == [1] and out.labels["reason"].tolist() == [2]
    assert not out.fallback.any()


def test_calibration_kind_must_fit_the_task():
    with pytest.raises(BundleError, match="binary task"):
        Calibrator([MULTI], {"reason": TaskCalibration.of("binary", {1: LookupTable.from_points(TABLE)})})
    with pytest.raises(BundleError, match="classes in"):
        Calibrator([MULTI], {"reason": TaskCalibration.of("multiclass", {5: LookupTable.from_points(TABLE)})})
    with pytest.raises(BundleError, match="unknown tasks"):
        Calibrator([BINARY], {"nope": TaskCalibration.of("none")})


def test_unsorted_or_non_finite_tables_are_rejected():
    with pytest.raises(ValueError, match="sorted"):
        LookupTable.from_points([(0.5, 0.1), (0.2, 0.3)])
    with pytest.raises(ValueError, match="finite"):
        LookupTable.from_points([(0.1, np.nan)])


def _saved(tmp_path):
    calibrator = Calibrator([BINARY, MULTI], {
        "abuse": TaskCalibration.of("binary", {1: LookupTable.from_points(TABLE)}),
        "reason": TaskCalibration.of("multiclass", {0: LookupTable.from_points(TABLE)})})
    calibrator.save(tmp_path)
    return calibrator


def test_save_load_round_trip(tmp_path):
    calibrator = _saved(tmp_path)
    loaded = Calibrator.load(tmp_path, [BINARY, MULTI], strict=True)
    assert loaded.version == calibrator.version
    probs = np.random.default_rng(3).dirichlet([1, 1], size=10).astype(np.float32)
    probs = np.concatenate([probs, np.random.default_rng(4).dirichlet([1, 1, 1], size=10)], axis=1)
    np.testing.assert_array_equal(loaded.apply(probs).calibrated["reason"],
                                  calibrator.apply(probs).calibrated["reason"])


def test_corrupt_table_falls_back_to_raw_for_that_task_only(tmp_path):
    _saved(tmp_path)
    (tmp_path / "abuse_class_1.npy").write_bytes(b"not a numpy file")
    loaded = Calibrator.load(tmp_path, [BINARY, MULTI])
    assert set(loaded.fallback_reasons) == {"abuse"}
    probs = np.array([[0.4, 0.6, 0.5, 0.25, 0.25]], dtype=np.float32)
    out = loaded.apply(probs)
    np.testing.assert_array_equal(out.calibrated["abuse"], probs[:, :2])
    assert out.fallback.tolist() == [[True, False]]
    with pytest.raises(BundleError, match="calibration/abuse"):
        Calibrator.load(tmp_path, [BINARY, MULTI], strict=True)


def test_unreadable_calibration_json_falls_back_everywhere(tmp_path):
    _saved(tmp_path)
    (tmp_path / "calibration.json").write_text("{broken", encoding="utf-8")
    loaded = Calibrator.load(tmp_path, [BINARY, MULTI])
    assert set(loaded.fallback_reasons) == {"abuse", "reason"}
    assert loaded.apply(np.full((2, 5), 0.2, dtype=np.float32)).fallback.all()


def test_version_is_the_fingerprint_of_the_tables_actually_loaded(tmp_path):
    saved = Calibrator([BINARY, MULTI], _saved(tmp_path).calibrations, label="2026-11")
    saved.save(tmp_path)
    loaded = Calibrator.load(tmp_path, [BINARY, MULTI])
    assert loaded.version == saved.version == f"2026-11@{saved.fingerprint()}"
    (tmp_path / "abuse_class_1.npy").write_bytes(b"broken")
    degraded = Calibrator.load(tmp_path, [BINARY, MULTI])
    # a table that could not be used marks the version, beside the per-row flags
    assert degraded.version.startswith("unavailable@") and degraded.version != saved.version


def test_a_table_file_outside_the_calibration_directory_is_refused(tmp_path):
    _saved(tmp_path / "calibration")
    np.save(tmp_path / "elsewhere.npy", np.array([[0.0, 0.0], [1.0, 1.0]]))
    payload = json.loads((tmp_path / "calibration" / "calibration.json").read_text(encoding="utf-8"))
    payload["tasks"]["abuse"]["tables"]["1"] = "../elsewhere.npy"
    (tmp_path / "calibration" / "calibration.json").write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(BundleError, match="inside the calibration directory"):
        Calibrator.load(tmp_path / "calibration", [BINARY, MULTI], strict=True)
    served = Calibrator.load(tmp_path / "calibration", [BINARY, MULTI])
    assert "abuse" in served.fallback_reasons and served.version.startswith("unavailable@")


@pytest.mark.parametrize("y", [(-0.2, 0.5), (0.1, 1.7)])
def test_tables_leaving_the_unit_interval_are_refused_or_fall_back(tmp_path, y):
    bad = LookupTable.from_points([(0.0, y[0]), (1.0, y[1])])
    with pytest.raises(BundleError, match=r"calibration/abuse.*outside \[0, 1\]"):
        Calibrator([BINARY], {"abuse": TaskCalibration.of("binary", {1: bad})})
    _saved(tmp_path)
    np.save(tmp_path / "abuse_class_1.npy", bad.points(), allow_pickle=False)
    loaded = Calibrator.load(tmp_path, [BINARY, MULTI])
    assert "outside [0, 1]" in loaded.fallback_reasons["abuse"]
    assert loaded.apply(np.full((1, 5), 0.2, dtype=np.float32)).fallback.tolist() == [[True, False]]


def test_pickled_table_is_refused(tmp_path):
    _saved(tmp_path)
    np.save(tmp_path / "abuse_class_1.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert "abuse" in Calibrator.load(tmp_path, [BINARY, MULTI]).fallback_reasons


def test_rows_that_cannot_be_calibrated_fall_back_alone():
    calibrator = Calibrator([MULTI], {"reason": TaskCalibration.of("multiclass", {
        c: LookupTable.from_points([(0.0, 0.0), (1.0, 0.0)]) for c in range(3)})})
    out = calibrator.apply(np.array([[0.2, 0.3, 0.5]], dtype=np.float32))  # every class maps to 0: sum 0
    assert out.fallback.tolist() == [[True]]
    np.testing.assert_array_equal(out.calibrated["reason"], np.float32([[0.2, 0.3, 0.5]]))


def test_no_calibration_directory_means_no_calibration(tmp_path):
    loaded = Calibrator.load(tmp_path / "absent", [BINARY])
    assert loaded.calibrations["abuse"].method == "none" and not loaded.fallback_reasons
    json.dumps(loaded.version)


def test_a_new_calibration_kind_is_one_class(tmp_path):
    """Temperature scaling, registered in the test: Calibrator, calibration.json and the
    fingerprint take it with no other change."""
    from dataclasses import dataclass
    from typing import Any, ClassVar

    from tce_backends.calibration import CALIBRATION_KINDS, calibration_kind

    @calibration_kind
    @dataclass(frozen=True)
    class Temperature(TaskCalibration):
        method: ClassVar[str] = "temperature_test"
        temperature: float = 2.0

        @classmethod
        def from_tables(cls, tables):
            return cls()

        def check(self, task) -> None:
            if self.temperature <= 0:
                raise ValueError("temperature must be > 0")

        def apply(self, raw: np.ndarray) -> np.ndarray:
            logits = np.log(np.clip(np.asarray(raw, dtype=np.float64), 1e-12, 1.0)) / self.temperature
            exp = np.exp(logits - logits.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)

        def fingerprint(self, digest: Any) -> None:
            digest.update(repr(self.temperature).encode())

        def save(self, directory, task: str) -> dict:
            return {"method": self.method, "temperature": self.temperature}

        @classmethod
        def from_entry(cls, entry, directory) -> "Temperature":
            return cls(float(entry["temperature"]))

    try:
        calibrator = Calibrator([MULTI], {"reason": Temperature(3.0)})
        calibrator.save(tmp_path)
        loaded = Calibrator.load(tmp_path, [MULTI], strict=True)
        assert isinstance(loaded.calibrations["reason"], Temperature)
        assert loaded.version == calibrator.version != Calibrator([MULTI], {"reason": Temperature(2.0)}).version
        scores = np.array([[0.7, 0.1, 0.1, 0.1]])
        calibrated = loaded.apply(scores).calibrated["reason"]
        assert calibrated[0, 0] < 0.7 and np.isclose(calibrated.sum(), 1.0)  # softened, still a distribution
    finally:
        CALIBRATION_KINDS.pop("temperature_test", None)
