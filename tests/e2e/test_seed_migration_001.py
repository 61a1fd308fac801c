"""Seed 001's migration test: a small consumer written only from the seed document, run on
what ``tce predict`` writes for the demo bundle served by Triton, with the job configured the
seed's way: ``ID_FIELD`` (required), ``DEVICE``, ``BATCH_SIZE``, ``NUM_WORKERS`` in the
environment and ``--job_type inference``.

The seed reads ``/opt/ml/processing/input/inference_data/`` (``data.csv``, ``.tsv`` or
``.parquet``, an optional ``_SUCCESS``) and writes ``/opt/ml/processing/output/predictions/``:
``inference_predictions.{format}`` in the input's format with the ID column and
``prob_class_0`` .. ``prob_class_N`` (no label column), an empty ``_SUCCESS`` and ``_HEALTH``
(``healthy: <ISO timestamp>``). ``--input`` and ``--output`` play those two directories;
``--task abuse`` picks one task of the two-task demo model, as the seed's one-task model."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports

pytestmark = pytest.mark.e2e

SEED_ENVIRONMENT = {"ID_FIELD": "record_id", "DEVICE": "cpu", "BATCH_SIZE": "16", "NUM_WORKERS": "0"}


def seed_001_predictions(predictions_dir: Path, input_format: str) -> pd.DataFrame:
    """The seed user's downstream step (metrics, calibration): read the documented outputs."""
    id_field = os.environ.get("ID_FIELD", SEED_ENVIRONMENT["ID_FIELD"])
    assert os.path.exists(os.path.join(predictions_dir, "_SUCCESS"))
    assert os.path.getsize(os.path.join(predictions_dir, "_SUCCESS")) == 0
    with open(os.path.join(predictions_dir, "_HEALTH")) as f:
        health = f.read().strip()
    assert health.startswith("healthy: ")
    datetime.fromisoformat(health[len("healthy: "):])
    path = os.path.join(predictions_dir, f"inference_predictions.{input_format}")
    df = pd.read_parquet(path) if input_format == "parquet" else \
        pd.read_csv(path, sep="\t" if input_format == "tsv" else ",")
    prob_cols = [c for c in df.columns if c.startswith("prob_class_")]
    assert prob_cols == [f"prob_class_{i}" for i in range(len(prob_cols))] and len(prob_cols) >= 2
    assert "label" not in df.columns  # pure inference: no label column
    return df[[id_field, *prob_cols]]


@pytest.fixture(scope="module")
def served(bimodal_bundle, tmp_path_factory):
    repository = write_repository(bimodal_bundle, tmp_path_factory.mktemp("seed_001") / "repository")
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        yield server


def run_the_seed_s_way(server: EmbeddedServer, inference_data: Path, predictions: Path
                       ) -> subprocess.CompletedProcess:
    env = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": "", **SEED_ENVIRONMENT}
    return subprocess.run([sys.executable, "-m", "tce.cli", "predict", "--job_type", "inference",
                           "--input", str(inference_data), "--output", str(predictions),
                           "--url", server.config.grpc_url, "--task", "abuse"],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_a_seed_001_consumer_reads_the_predictions(served, tmp_path, input_format):
    frame = make_dataset(40, seed=17).drop(columns=["abuse", "reason"])
    inference_data = tmp_path / "input" / "inference_data"
    inference_data.mkdir(parents=True)
    if input_format == "parquet":
        frame.to_parquet(inference_data / "data.parquet")
    else:
        frame.to_csv(inference_data / "data.csv", index=False)
    (inference_data / "_SUCCESS").write_text("")  # the upstream step's optional marker

    result = run_the_seed_s_way(served, inference_data, tmp_path / "output" / "predictions")
    assert result.returncode == 0, result.stderr
    assert "DEVICE=cpu, NUM_WORKERS=0: the server decides" in result.stderr  # acknowledged, not silently dropped

    predictions = seed_001_predictions(tmp_path / "output" / "predictions", input_format)
    assert predictions["record_id"].astype(str).tolist() == frame["record_id"].tolist()
    probabilities = predictions.drop(columns=["record_id"]).to_numpy()
    assert probabilities.shape == (40, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
