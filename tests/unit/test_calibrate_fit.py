"""tce calibrate fit: tables fitted from a labelled predictions file improve calibration."""
import shutil

import numpy as np
import pandas as pd
import pytest

from tce.jobs.calibrate import fit, report
from tce.lib.demo_data import make_dataset
from tce.repository.builder import schema_for
from tce.trainer.training import task_labels
from tce_backends.bundle import Bundle
from tce_backends.reference import ReferencePipeline


@pytest.fixture()
def predictions_file(bimodal_bundle, tmp_path):
    """Raw predictions of the bundle's model on fresh labelled data, in the multi-task file layout."""
    frame = make_dataset(600, seed=42)
    outputs = ReferencePipeline(bimodal_bundle).predict(schema_for(bimodal_bundle.manifest).encode(frame))
    columns = {}
    for task in bimodal_bundle.manifest.tasks:
        for i in range(task.num_classes):
            columns[f"{task.name}_prob_class_{i}"] = outputs[f"{task.name}_raw"][:, i]
        columns[f"label_{task.name}"] = task_labels(task, frame)
    path = tmp_path / "predictions.parquet"
    pd.DataFrame(columns).to_parquet(path)
    return path


@pytest.mark.parametrize("method", ["isotonic", "sigmoid"])
def test_fit_writes_tables_that_improve_calibration(bimodal_bundle, predictions_file, tmp_path, method):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    (bundle_dir / "calibration" / "calibration.json").unlink()  # start uncalibrated
    before = report(bundle_dir, predictions_file, tmp_path / "before")
    calibrator = fit(bundle_dir, predictions_file, method=method, points=500, label="fit-test")
    assert calibrator.version == f"fit-test@{calibrator.fingerprint()}"
    loaded = Bundle.load(bundle_dir).calibrator
    assert loaded.version == calibrator.version
    assert loaded.model_fingerprint == Bundle.load(bundle_dir).model_fingerprint()  # fitted for this model.pt
    assert loaded.calibrations["abuse"].method == "binary"
    assert loaded.calibrations["reason"].method == "multiclass"
    assert loaded.calibrations["abuse"].tables[1].x.size == 500
    after = report(bundle_dir, predictions_file, tmp_path / "after")
    for task in ("abuse", "reason"):
        assert before[task]["calibrated"].ece == pytest.approx(before[task]["raw"].ece)  # no calibration yet
        assert after[task]["calibrated"].ece < after[task]["raw"].ece


def test_fit_one_task_keeps_the_others(bimodal_bundle, predictions_file, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    reason_before = Bundle.load(bundle_dir).calibrator.calibrations["reason"]
    fit(bundle_dir, predictions_file, method="percentile", tasks=["abuse"])
    loaded = Bundle.load(bundle_dir).calibrator
    assert loaded.calibrations["abuse"].method == "percentile"
    np.testing.assert_array_equal(loaded.calibrations["reason"].tables[0].y, reason_before.tables[0].y)


def test_fit_names_missing_columns(bimodal_bundle, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, bundle_dir)
    pd.DataFrame({"abuse_prob_class_0": [0.5], "abuse_prob_class_1": [0.5]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ValueError, match="no scores for task 'reason'"):
        fit(bundle_dir, tmp_path / "p.csv", tasks=["reason"])
    with pytest.raises(ValueError, match="no label column 'label_abuse'"):
        fit(bundle_dir, tmp_path / "p.csv", tasks=["abuse"])
