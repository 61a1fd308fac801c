"""The commands a user types, run as subprocesses."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tce.serving.server import free_ports

pytestmark = pytest.mark.e2e
TCE = [sys.executable, "-m", "tce.cli"]
SEED_004_SPEED_FIELDS = ("samples_tested", "avg_time_per_sample_ms", "std_time_per_sample_ms",
                         "min_time_per_sample_ms", "max_time_per_sample_ms", "median_time_per_sample_ms",
                         "throughput_samples_per_sec", "device")


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TCE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("e2e")
    bundle, repository = root / "bundle", root / "repository"
    made = run("demo-bundle", "--out", str(bundle), "--encoder", "minilm", "--rows", "400", "--epochs", "10")
    assert made.returncode == 0, made.stderr
    built = run("build", str(bundle), "--out", str(repository))
    assert built.returncode == 0, built.stderr
    return bundle, repository, made.stdout


def test_demo_bundle_prints_raw_and_calibrated_metrics(built):
    _, _, output = built
    assert "AUROC" in output and "ECE" in output and "Brier" in output
    for task in ("abuse", "reason"):
        for scores in ("raw", "calibrated"):
            assert re.search(rf"^{task}\s+{scores}\s+[0-9.]+\s+[0-9.]+", output, re.MULTILINE), output


def test_demo_scores_over_http_and_grpc_and_stops(built):
    _, repository, _ = built
    result = run("demo", "--repository", str(repository), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "== HTTP" in result.stdout and "== GRPC" in result.stdout
    assert "raw" in result.stdout and "cal" in result.stdout and " ms" in result.stdout
    assert "server stopped." in result.stdout


def test_serve_runs_until_sigterm_then_cleans_up(built):
    _, repository, _ = built
    http_port, grpc_port, metrics_port = free_ports()
    process = subprocess.Popen([*TCE, "serve", "--repository", str(repository), "--http-port", str(http_port),
                                "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if "Triton ready" in line or not line:
                break
        assert "Triton ready" in line, line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert "Triton stopped." in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert not list(Path("/dev/shm").glob(f"tce{process.pid}_*")), "shared memory left behind"


def test_build_names_the_broken_bundle_part(built, tmp_path):
    bundle, _, _ = built
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(bundle), str(broken)], check=True)
    os.remove(broken / "tabular" / "tabular.json")
    result = run("build", str(broken), "--out", str(tmp_path / "repo"))
    assert result.returncode == 2
    assert "bundle part 'tabular'" in result.stderr and "tabular.json" in result.stderr


def test_serve_refuses_a_missing_repository(tmp_path):
    result = run("serve", "--repository", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_benchmark_prints_the_three_ways_and_writes_seed_004_fields(built, tmp_path):
    _, repository, _ = built
    out = tmp_path / "benchmark.json"
    result = run("benchmark", "--repository", str(repository), "--records", "24", "--batch-sizes", "1,4",
                 "--single-pairs", "6", "--concurrency", "2", "--seconds", "1", "--out", str(out),
                 "--test-results", str(tmp_path / "test_results"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for line in ("(a) model.pt in process, batch 4", "(b) fixed padding, batch 4", "(c) served, concurrency 2",
                 "served saturation / in-process best", "added p50 at concurrency 1",
                 "server statistics per request, saturation", "multimodal_model", "calibrator"):
        assert line in result.stdout, result.stdout
    figures = json.loads(out.read_text())
    assert set(figures["speed_metrics"]) == {"in_process", "fixed_padding", "served_saturation",
                                             "served_concurrency_1"}
    for mode, metrics in figures["speed_metrics"].items():
        device = figures["served_device"] if mode.startswith("served") else figures["device"]
        assert set(SEED_004_SPEED_FIELDS) <= set(metrics) and metrics["device"] == device
        assert metrics["samples_tested"] > 0 and metrics["throughput_samples_per_sec"] > 0
        assert metrics["min_time_per_sample_ms"] <= metrics["median_time_per_sample_ms"] <= \
            metrics["max_time_per_sample_ms"]
    assert figures["served_by_concurrency"]["2"]["errors"] == 0
    assert 0 < figures["real_token_share"] < 1  # the mix has padding for the model to skip
    assert all(figures["ratios"][name] > 0 for name in ("served_vs_in_process_best", "served_vs_fixed_padding_best"))
    assert figures["steps_saturation"]["multimodal_model"]["mean_batch"] >= 1
    # Seed 004's file: the served saturation figures, and without labelled records every metric "NaN",
    # named <task>_<seed name> for the demo's two tasks.
    seed = json.loads((tmp_path / "test_results" / "fold_0" / "val" / "test_metrics.json").read_text())
    assert list(seed["speed_metrics"]) == list(SEED_004_SPEED_FIELDS)
    assert seed["speed_metrics"]["samples_tested"] == figures["speed_metrics"]["served_saturation"]["samples_tested"]
    assert seed["metrics"]["abuse_roc_auc_macro"] == "NaN" and seed["metrics"]["reason_top_3_accuracy"] == "NaN"
    assert set(seed["metrics"].values()) == {"NaN"} and figures["quality_metrics"] is None
    assert "quality metrics: none (no --labelled records)" in result.stdout
