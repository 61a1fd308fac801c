"""tce import-seed, tce calibrate fit/apply/report/publish and tce predict, as subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_backends.bundle import Bundle
from tests.seed_layout import write_seed

pytestmark = pytest.mark.e2e


def tce(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tce.cli", *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""})
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_seed_to_served_predictions_in_seed_format(binary_bundle, tmp_path):
    write_seed(binary_bundle, tmp_path / "seed", "binary")
    imported = tce("import-seed", str(tmp_path / "seed"), str(tmp_path / "bundle"))
    assert "bundle written to" in imported.stdout

    # calibrate apply on a seed calibration/ directory, Parquet in, TSV out
    rng = np.random.default_rng(0)
    p1 = rng.random(50)
    pd.DataFrame({"id": range(50), "prob_class_0": 1 - p1, "prob_class_1": p1}).to_parquet(tmp_path / "p.parquet")
    tce("calibrate", "apply", "--calibration", str(tmp_path / "seed" / "calibration"),
        "--input", str(tmp_path / "p.parquet"), "--output", str(tmp_path / "p.tsv"))
    applied = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert {"id", "prob_class_1", "calibrated_prob_class_1"} <= set(applied.columns)

    # fit new tables from labelled predictions, then report
    labelled = pd.DataFrame({"prob_class_0": 1 - p1, "prob_class_1": p1, "label": (rng.random(50) < p1 ** 2)})
    labelled["label"] = labelled["label"].astype(int)
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    fitted = tce("calibrate", "fit", "--bundle", str(tmp_path / "bundle"), "--predictions",
                 str(tmp_path / "labelled.csv"), "--method", "sigmoid", "--version", "v2")
    assert "calibration version v2" in fitted.stdout
    reported = tce("calibrate", "report", "--calibration", str(tmp_path / "bundle"), "--input",
                   str(tmp_path / "labelled.csv"), "--out", str(tmp_path / "report"))
    assert "ECE" in reported.stdout and (tmp_path / "report" / "reliability_abuse.png").is_file()

    # serve the imported bundle, publish nothing yet, score a file in the seed's JSON format
    repository = write_repository(Bundle.load(tmp_path / "bundle"), tmp_path / "repository")
    ports = free_ports()
    with EmbeddedServer(ServerConfig(repository, *ports, model_control_mode="explicit",
                                     load_models=("*",))) as server:
        make_dataset(30, seed=8).drop(columns=["abuse", "reason"]).to_csv(tmp_path / "records.csv", index=False)
        tce("predict", "--url", server.config.http_url, "--protocol", "http", "--input", str(tmp_path / "records.csv"),
            "--output", str(tmp_path / "json"), "--format", "seed-json")
        body = json.loads((tmp_path / "json" / "inference_predictions.json").read_text(encoding="utf-8"))
        assert len(body["predictions"]) == 30
        assert set(body["predictions"][0]) == {"legacy-score", "calibrated-score", "output-label"}
        tce("predict", "--url", server.config.grpc_url, "--protocol", "grpc", "--input",
            str(tmp_path / "records.csv"), "--output", str(tmp_path / "table"), "--format", "parquet",
            "--id-field", "record_id")
        table = pd.read_parquet(tmp_path / "table" / "inference_predictions.parquet")
        assert list(table.columns[:3]) == ["record_id", "prob_class_0", "calibrated_prob_class_0"]
        refused = tce("calibrate", "publish", "--bundle", str(tmp_path / "bundle"), "--repository",
                      str(repository), "--url", server.config.http_url, check=False)
        assert refused.returncode == 2 and "admin key" in refused.stderr and "Traceback" not in refused.stderr
        assert not (repository / "calibrator" / "2").exists()
        published = tce("calibrate", "publish", "--bundle", str(tmp_path / "bundle"), "--repository",
                        str(repository), "--url", f"http://{server.config.http_url}",
                        "--admin-key-file", str(server.admin_key_file))
        assert "calibrator version 2" in published.stdout
