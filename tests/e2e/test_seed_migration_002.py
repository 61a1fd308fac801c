"""Seed 002's migration test: a small consumer written only from the seed document (its
outputs under ``/opt/ml/processing/output/``: ``eval/eval_predictions.<fmt>`` with the ID,
label and ``prob_class_<i>`` columns; ``metrics/metrics.json`` with ``eval/auroc``,
``eval/average_precision``, ``eval/f1_score``, ``f1_score_at_<t>`` / ``precision_at_<t>`` /
``recall_at_<t>`` for a binary model and ``auroc_class_<i>`` / ``f1_score_class_<i>`` for a
multiclass one; ``metrics_summary.txt``; ``roc_curve.jpg`` and ``pr_curve.jpg``; the
``_SUCCESS`` and ``_HEALTH`` markers; the ``COMPARISON_MODE`` and ``PREVIOUS_SCORE_FIELD``
variables), run on what ``tce evaluate`` writes for the demo bundle served by Triton.
``--out`` plays ``/opt/ml/processing/output``; ``--task`` picks one task of the two-task demo
model, as the seed's one-task model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from tce.lib.demo_data import write_demo_records
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

pytestmark = pytest.mark.e2e

ID_FIELD = "record_id"


def seed_002_outputs(output_root: Path, label_field: str) -> tuple[dict, pd.DataFrame, str]:
    """The seed user's downstream step: read the evaluation step's documented outputs."""
    eval_dir = os.path.join(output_root, "eval")        # /opt/ml/processing/output/eval/
    metrics_dir = os.path.join(output_root, "metrics")  # /opt/ml/processing/output/metrics/
    for directory in (eval_dir, metrics_dir):
        assert os.path.exists(os.path.join(directory, "_SUCCESS")), directory
        assert os.path.exists(os.path.join(directory, "_HEALTH")), directory
    with open(os.path.join(metrics_dir, "metrics.json"), "r") as f:
        metrics = json.load(f)
    with open(os.path.join(metrics_dir, "metrics_summary.txt"), "r") as f:
        summary = f.read()
    assert summary.startswith("PYTORCH MODEL EVALUATION METRICS\n")
    assert f"AUC-ROC:           {metrics['eval/auroc']:.4f}\n" in summary
    assert f"Average Precision: {metrics['eval/average_precision']:.4f}\n" in summary
    assert f"F1 Score:          {metrics['eval/f1_score']:.4f}\n" in summary
    for plot in ("roc_curve.jpg", "pr_curve.jpg"):
        assert os.path.getsize(os.path.join(metrics_dir, plot)) > 0, plot
    predictions = pd.read_csv(os.path.join(eval_dir, "eval_predictions.csv"))
    assert ID_FIELD in predictions and label_field in predictions
    return metrics, predictions, summary


def probabilities(predictions: pd.DataFrame) -> np.ndarray:
    count = len([c for c in predictions.columns if c.startswith("prob_class_")])
    return predictions[[f"prob_class_{i}" for i in range(count)]].to_numpy()


@pytest.fixture(scope="module")
def served(bimodal_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_002")
    repository = write_repository(bimodal_bundle, root / "repository")
    labelled = root / "labelled.csv"
    frame = write_demo_records(labelled, rows=200, seed=5, labels=True)
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        yield server, labelled, frame


def evaluate(server: EmbeddedServer, labelled: Path, out: Path, task: str, **variables: str) -> None:
    env = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": "", **variables}
    result = subprocess.run([sys.executable, "-m", "tce.cli", "evaluate", "--input", str(labelled), "--out", str(out),
                             "--url", server.config.grpc_url, "--id-field", ID_FIELD, "--task", task,
                             "--bootstrap-samples", "20"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr


def test_a_seed_002_consumer_reads_the_binary_evaluation_and_its_comparison(served, tmp_path):
    server, labelled, frame = served
    evaluate(server, labelled, tmp_path, "abuse", COMPARISON_MODE="true", PREVIOUS_SCORE_FIELD="previous_abuse_score")
    metrics, predictions, summary = seed_002_outputs(tmp_path, "label_abuse")
    assert predictions[ID_FIELD].tolist() == frame[ID_FIELD].tolist()
    y_true, y_score = predictions["label_abuse"].to_numpy(), probabilities(predictions)[:, 1]
    assert metrics["eval/auroc"] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)
    for threshold in [0.3, 0.5, 0.7]:
        y_pred = (y_score >= threshold).astype(int)
        assert metrics[f"f1_score_at_{threshold}"] == pytest.approx(f1_score(y_true, y_pred), abs=1e-9)
        assert metrics[f"precision_at_{threshold}"] == pytest.approx(
            precision_score(y_true, y_pred, zero_division=0), abs=1e-9)
        assert metrics[f"recall_at_{threshold}"] == pytest.approx(recall_score(y_true, y_pred), abs=1e-9)
    # beyond the seed's names: its comparison mode ran, with its three tests (the project's keys)
    for test in ("paired_t_test", "wilcoxon", "mcnemar/0.5"):
        assert 0 <= metrics[f"comparison/{test}/p_value"] <= 1, test
    assert "comparison/wilcoxon/p_value: " in summary
    project = json.loads((tmp_path / "metrics.json").read_text())
    assert list(project["tasks"]) == ["abuse"] and project["comparison"]["previous_score_field"] == \
        "previous_abuse_score"


def test_a_seed_002_consumer_reads_the_multiclass_evaluation(served, tmp_path):
    server, labelled, _ = served
    evaluate(server, labelled, tmp_path, "reason")
    metrics, predictions, _ = seed_002_outputs(tmp_path, "label_reason")
    y_true, y_prob = predictions["label_reason"].to_numpy(), probabilities(predictions)
    assert y_prob.shape[1] == 4 and set(y_true) == {0, 1, 2, 3}
    for i in range(y_prob.shape[1]):
        assert metrics[f"auroc_class_{i}"] == pytest.approx(roc_auc_score(y_true == i, y_prob[:, i]), abs=1e-9)
        assert metrics[f"f1_score_class_{i}"] == pytest.approx(f1_score(y_true == i, y_prob[:, i] > 0.5), abs=1e-9)
    assert not any(key.startswith("comparison/") for key in metrics)  # COMPARISON_MODE defaults to false
