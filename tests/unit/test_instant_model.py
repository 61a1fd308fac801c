"""The instant model of ``tce benchmark --instant-model``, and the calibrator's cached columns."""
from __future__ import annotations

import numpy as np
import pytest

from tce.jobs.instant import constant_probabilities, instant_repository
from tce.repository.builder import write_repository
from tce_backends import contract
from tce_backends.bundle import MODEL_FILE, Manifest
from tce_backends.graph import CALIBRATOR, MULTIMODAL_MODEL
from tce_backends.model_runner import ModelRunner
from tce_backends.steps import CalibratorStep


@pytest.fixture(scope="module")
def instant(bimodal_bundle, tmp_path_factory):
    source = write_repository(bimodal_bundle, tmp_path_factory.mktemp("source") / "repo")
    return source, instant_repository(source, tmp_path_factory.mktemp("instant") / "repo")


def test_the_instant_model_has_the_signature_and_answers_constant_valid_probabilities(instant, bimodal_bundle):
    source, copy = instant
    manifest = Manifest.load(copy / MULTIMODAL_MODEL / "1")
    runner = ModelRunner(copy / MULTIMODAL_MODEL / "1" / MODEL_FILE, device="cpu")
    row = constant_probabilities(manifest)
    for batch in (1, 5):
        inputs = []
        for f in bimodal_bundle.text.fields:
            inputs += [np.ones((batch, f.max_chunks, f.max_length), dtype=np.int64)] * 2
        inputs.append(np.zeros((batch, len(manifest.features.names)), dtype=np.float32))
        out = runner(inputs)
        assert out.shape == (batch, row.size) and np.array_equal(out, np.tile(row, (batch, 1)))
    start = 0
    for task in manifest.tasks:  # every task's block is a distribution
        assert np.isclose(row[start:start + task.num_classes].sum(), 1.0)
        start += task.num_classes
    assert (source / MULTIMODAL_MODEL / "1" / MODEL_FILE).read_bytes() != \
        (copy / MULTIMODAL_MODEL / "1" / MODEL_FILE).read_bytes()  # the source is left alone
    assert (copy / CALIBRATOR / "1").is_dir()


def test_calibrator_constant_columns_are_right_for_every_batch_and_read_only(instant):
    _, copy = instant
    step = CalibratorStep.load(copy / CALIBRATOR / "1", Manifest.load(copy / CALIBRATOR / "1"))
    width = sum(t.num_classes for t in step.calibrator.tasks)
    for batch in (1, 3, 130, 2):  # grows past the first cache, then shrinks
        out = step.run({contract.PROBABILITIES: np.full((batch, width), 1.0 / width, dtype=np.float32)})
        for name, value in ((contract.CALIBRATION_VERSION, step.calibrator.version), (contract.RELEASE, step.release)):
            assert out[name].shape == (batch, 1) and out[name][:, 0].tolist() == [value.encode()] * batch
            with pytest.raises(ValueError):
                out[name][0, 0] = b"changed"


def test_the_merged_variant_changes_only_the_preprocessors_batching(instant, tmp_path):
    from tce.repository.builder import read_config
    from tce_backends.graph import PREPROCESSOR

    source, isolated = instant
    merged = instant_repository(source, tmp_path / "merged", preprocessor_batching=True)
    config = read_config(merged / PREPROCESSOR / "config.pbtxt")
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert list(read_config(isolated / PREPROCESSOR / "config.pbtxt").dynamic_batching.preferred_batch_size) == [1]
    assert read_config(source / PREPROCESSOR / "config.pbtxt") == read_config(isolated / PREPROCESSOR / "config.pbtxt")
