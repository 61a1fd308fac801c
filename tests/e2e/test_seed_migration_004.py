"""Seed 004's user, migrated: their command line (``scripts/test.py``'s flags) runs as
``tce benchmark``, and the code they wrote against the seed's ``test_metrics.json`` reads the
project's output unchanged.

The consumer below is written from the seed document only: the file at
``outputs/test_results/fold_{fold_idx}/{split}/test_metrics.json``, its keys ``checkpoint``,
``model_name``, ``split``, ``fold``, ``metrics`` (the names of its example, ``"NaN"`` where
undefined, top-k "if available") and the flat ``speed_metrics``. The model is the demo's
single-task multiclass bundle (``reason``), the seed's kind of model."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tce.lib.demo_data import demo_records
from tce.repository.builder import write_repository

pytestmark = pytest.mark.e2e


# --- the seed user's consumer (seed 004, sections 4 and 8) ---------------------------------------------------------

def load_test_metrics(outputs: Path, fold: int, split: str) -> dict:
    with open(outputs / "test_results" / f"fold_{fold}" / split / "test_metrics.json") as f:
        return json.load(f)


def as_number(value) -> float:
    return float("nan") if value == "NaN" else float(value)


def report_row(results: dict) -> dict:
    """One row of the user's model-comparison sheet."""
    metrics = results["metrics"]
    row = {"checkpoint": results["checkpoint"], "model": results["model_name"], "split": results["split"],
           "fold": int(results["fold"])}
    for name in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                 "precision_weighted", "recall_weighted", "f1_weighted", "top_1_accuracy", "roc_auc_micro",
                 "roc_auc_macro", "average_precision_micro", "average_precision_macro"):
        row[name] = as_number(metrics[name])
    for k in [3, 5]:  # as the seed's trainer: top-k "if available"
        key = f"top_{k}_accuracy"
        if key in metrics:
            row[key] = as_number(metrics[key])
    speed = results["speed_metrics"]
    row["samples_tested"] = int(speed["samples_tested"])
    for name in ("avg_time_per_sample_ms", "std_time_per_sample_ms", "min_time_per_sample_ms",
                 "max_time_per_sample_ms", "median_time_per_sample_ms", "throughput_samples_per_sec"):
        row[name] = as_number(speed[name])
    row["device"] = str(speed["device"])
    return row


# --- the run ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repository(multiclass_bundle, tmp_path_factory) -> Path:
    return write_repository(multiclass_bundle, tmp_path_factory.mktemp("seed004") / "repository")


def test_the_seed_command_line_writes_what_the_seed_consumer_reads(repository, tmp_path):
    split = demo_records(48, seed=4, labels=True)
    split = split[split["label_reason"] != "harassment"]  # a class absent from the split: roc_auc_macro undefined
    split.to_csv(tmp_path / "val.csv", index=False)
    outputs = tmp_path / "outputs"
    checkpoint = repository / "multimodal_model" / "1" / "model.pt"
    seed_flags = ["--checkpoint", str(checkpoint), "--model_name", "minilm_reason", "--batch_size", "4",
                  "--image_size", "224", "--split", "val", "--fold", "0", "--num_folds", "5", "--device", "cpu",
                  "--num_inference_samples", "8"]
    project_flags = ["--labelled", str(tmp_path / "val.csv"), "--label", "reason=label_reason",
                     "--test-results", str(outputs / "test_results"), "--out", str(tmp_path / "benchmark.json"),
                     "--single-pairs", "2", "--concurrency", "2", "--seconds", "0.5"]
    result = subprocess.run([sys.executable, "-m", "tce.cli", "benchmark", *seed_flags, *project_flags],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--image_size 224 is ignored" in result.stderr  # notes: logged on stderr
    assert "the served ensemble, (c), runs where the server puts it" in result.stderr

    results = load_test_metrics(outputs, fold=0, split="val")
    row = report_row(results)
    assert list(results) == ["checkpoint", "model_name", "split", "fold", "metrics", "speed_metrics"]
    assert (row["checkpoint"], row["model"], row["split"], row["fold"]) == (str(checkpoint), "minilm_reason", "val", 0)
    assert results["metrics"]["roc_auc_macro"] == "NaN" and math.isnan(row["roc_auc_macro"])
    assert "top_3_accuracy" in row and "top_5_accuracy" not in row  # four classes: top-5 is not available
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "top_1_accuracy", "roc_auc_micro",
                 "average_precision_macro"):
        assert 0 <= row[name] <= 1, (name, row[name])
    assert row["top_1_accuracy"] <= row["top_3_accuracy"]
    assert row["samples_tested"] > 0 and row["throughput_samples_per_sec"] > 0
    assert row["min_time_per_sample_ms"] <= row["median_time_per_sample_ms"] <= row["max_time_per_sample_ms"]
    assert row["device"] == "cpu" or row["device"].startswith("cuda")

    # The richer file holds the same quality metrics, and the flat figures are its served saturation run.
    figures = json.loads((tmp_path / "benchmark.json").read_text())
    assert figures["quality_metrics"] == results["metrics"] and figures["labelled_records"] == len(split)
    saturation = figures["speed_metrics"]["served_saturation"]
    assert {k: saturation[k] for k in results["speed_metrics"]} == results["speed_metrics"]
    sheet = pd.DataFrame([row])  # what the user did with it next
    assert sheet.loc[0, "split"] == "val" and sheet["f1_macro"].notna().all()
