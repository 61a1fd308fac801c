"""Seed 004's quality metrics and its test_metrics.json: the numbers scikit-learn gives when
called directly, the seed's names and order, "NaN" where a metric is undefined."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as sk

from tce.lib.seed_benchmark_metrics import (
    json_ready,
    metric_names,
    seed_metrics,
    tasks_metrics,
    undefined_metrics,
)
from tce.lib.seed_test_metrics import SPEED_FIELDS, SeedLayout, seed_document, write_test_metrics
from tce_backends.errors import UsageError

# The metric names of the seed's documented example, in its order (seed 004, section 4).
SEED_EXAMPLE_NAMES = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                      "precision_weighted", "recall_weighted", "f1_weighted", "top_1_accuracy", "top_3_accuracy",
                      "top_5_accuracy", "roc_auc_micro", "roc_auc_macro", "average_precision_micro",
                      "average_precision_macro"]


def scores(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes)) + 1.5 * np.eye(classes)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_six_classes_have_the_seed_example_names_and_sklearn_values():
    labels, probabilities = scores(300, 6, seed=1)
    got = seed_metrics(labels, probabilities)
    assert list(got) == SEED_EXAMPLE_NAMES
    predicted = probabilities.argmax(axis=1)
    onehot = np.eye(6)[labels]
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert got["f1_macro"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert got["precision_weighted"] == pytest.approx(sk.precision_score(labels, predicted, average="weighted"))
    assert got["recall_weighted"] == pytest.approx(sk.recall_score(labels, predicted, average="weighted"))
    assert got["top_1_accuracy"] == pytest.approx(got["accuracy"])
    assert got["top_5_accuracy"] == pytest.approx(sk.top_k_accuracy_score(labels, probabilities, k=5))
    assert got["roc_auc_macro"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr"))
    assert got["roc_auc_micro"] == pytest.approx(sk.roc_auc_score(onehot, probabilities, average="micro"))
    assert got["average_precision_micro"] == pytest.approx(
        sk.average_precision_score(onehot, probabilities, average="micro"))
    assert 0 < got["top_1_accuracy"] < got["top_3_accuracy"] < got["top_5_accuracy"] < 1


def test_top_k_is_kept_only_below_the_number_of_classes():
    assert [n for n in metric_names(4) if n.startswith("top_")] == ["top_1_accuracy", "top_3_accuracy"]
    assert [n for n in metric_names(2) if n.startswith("top_")] == ["top_1_accuracy"]
    labels, probabilities = scores(200, 2, seed=2)
    got = seed_metrics(labels, probabilities)
    assert list(got) == metric_names(2)
    assert got["roc_auc_macro"] == pytest.approx(sk.roc_auc_score(labels, probabilities[:, 1]))
    assert got["top_1_accuracy"] == pytest.approx(got["accuracy"])


def test_a_class_absent_from_the_labels_makes_roc_auc_macro_nan_written_as_the_string():
    labels, probabilities = scores(120, 4, seed=3)
    labels[labels == 3] = 0  # no record of class 3: its ROC curve has no positive
    got = seed_metrics(labels, probabilities)
    assert math.isnan(got["roc_auc_macro"])
    assert got["roc_auc_micro"] == pytest.approx(sk.roc_auc_score(np.eye(4)[labels], probabilities, average="micro"))
    assert got["top_3_accuracy"] == pytest.approx(sk.top_k_accuracy_score(labels, probabilities, k=3,
                                                                          labels=[0, 1, 2, 3]))
    written = json.loads(json.dumps(json_ready(got), allow_nan=False))
    assert written["roc_auc_macro"] == "NaN"
    assert all(isinstance(v, float) for k, v in written.items() if k != "roc_auc_macro")


def test_one_class_only_leaves_every_ranking_metric_undefined_but_accuracy_defined():
    labels = np.zeros(10, dtype=np.int64)
    probabilities = np.tile([0.7, 0.2, 0.1], (10, 1))
    got = json_ready(seed_metrics(labels, probabilities))
    assert got["accuracy"] == 1.0 and got["roc_auc_macro"] == "NaN"


def test_several_tasks_prefix_each_name_with_the_task_as_prediction_columns_do():
    abuse, reason = scores(100, 2, seed=4), scores(100, 4, seed=5)
    got = tasks_metrics([("abuse", *abuse), ("reason", *reason)])
    assert list(got) == [f"abuse_{n}" for n in metric_names(2)] + [f"reason_{n}" for n in metric_names(4)]
    assert got["reason_f1_macro"] == pytest.approx(seed_metrics(*reason)["f1_macro"])
    assert list(tasks_metrics([("reason", *reason)])) == metric_names(4)  # one task: the seed's own names
    assert list(undefined_metrics([("abuse", 2), ("reason", 4)])) == list(got)
    assert set(json_ready(undefined_metrics([("reason", 4)])).values()) == {"NaN"}


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="classes >= 2"):
        seed_metrics(np.zeros(3), np.zeros((3, 1)))


SPEED = {"samples_tested": 64, "avg_time_per_sample_ms": 2.5, "std_time_per_sample_ms": 0.1,
         "min_time_per_sample_ms": 2.0, "max_time_per_sample_ms": 3.0, "median_time_per_sample_ms": 2.4,
         "throughput_samples_per_sec": 400.0, "device": "cpu", "concurrency": 32}


def test_test_metrics_json_has_the_seed_keys_in_order_at_the_seed_path(tmp_path):
    layout = SeedLayout(tmp_path / "test_results", split="test", fold=2)
    labels, probabilities = scores(50, 4, seed=6)
    document = seed_document(layout, "repo/multimodal_model/1/model.pt", "demo", seed_metrics(labels, probabilities),
                             {**SPEED, "avg_time_per_sample_ms": math.nan})
    path = write_test_metrics(layout, document)
    assert path == tmp_path / "test_results" / "fold_2" / "test" / "test_metrics.json"
    assert [p.name for p in path.parent.iterdir()] == ["test_metrics.json"]  # nothing left aside
    text = path.read_text()
    read = json.loads(text)
    assert list(read) == ["checkpoint", "model_name", "split", "fold", "metrics", "speed_metrics"]
    assert (read["checkpoint"], read["model_name"], read["split"], read["fold"]) == \
        ("repo/multimodal_model/1/model.pt", "demo", "test", 2)
    assert list(read["speed_metrics"]) == list(SPEED_FIELDS)  # the seed's eight, not the extra concurrency
    assert read["speed_metrics"]["avg_time_per_sample_ms"] == "NaN" and '"NaN"' in text
    assert read["metrics"]["f1_macro"] == pytest.approx(seed_metrics(labels, probabilities)["f1_macro"])
    renamed = seed_document(SeedLayout(tmp_path, model_name="resnet50"), "c", "demo", {}, SPEED)
    assert renamed["model_name"] == "resnet50"


@pytest.mark.parametrize(("settings", "message"), [({"split": "train"}, "--split must be one of val, test"),
                                                   ({"fold": 5}, "--fold must be in 0..4"),
                                                   ({"fold": -1}, "--fold must be in 0..4")])
def test_a_split_or_fold_the_seed_would_not_take_is_one_clear_error(settings, message):
    with pytest.raises(UsageError, match=message):
        SeedLayout(**settings)
