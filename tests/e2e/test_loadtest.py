"""`tce loadtest` (what `make loadtest` runs): the SLO verdict is the exit code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tce.repository.builder import write_repository
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def loadtest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tce.cli", "loadtest", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def demo_repository() -> Path:
    """The demo model repository `make build` writes (built here if missing)."""
    repository = REPO_ROOT / "model_repository"
    if not (repository / "multimodal_model" / "1" / "model.pt").is_file():
        for command in (["demo-bundle", "--out", "artifacts/demo_bundle"],
                        ["build", "artifacts/demo_bundle", "--out", "model_repository"]):
            subprocess.run([sys.executable, "-m", "tce.cli", *command], check=True, cwd=REPO_ROOT, timeout=600)
    return repository


def test_unattainable_slo_fails_and_names_it(bimodal_bundle, tmp_path):
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    slo = tmp_path / "slo.yaml"
    slo.write_text("protocols:\n  http: {p50_ms: 0.001, p95_ms: 0.002, p99_ms: 10000}\n"
                   "max_error_rate: 0.0\nmin_throughput_rps: 0\n", encoding="utf-8")
    result = loadtest("--repository", str(repository), "--duration", "4s", "--users", "2", "--protocol", "http",
                      "--slo-file", str(slo), "--reports", str(tmp_path / "reports"))
    assert result.returncode != 0
    assert "FAIL http.p50_ms" in result.stdout and "missed by" in result.stdout
    assert "FAILED: http.p50_ms, http.p95_ms" in result.stdout
    assert "PASS http.p99_ms" in result.stdout
    verdict = json.loads((tmp_path / "reports" / "slo_verdict.json").read_text(encoding="utf-8"))
    assert verdict["passed"] is False


def test_latency_gate_on_the_demo_model(demo_repository, tmp_path):
    """~30 s of HTTP + gRPC traffic on the MiniLM demo against tests/e2e/slo_gate.yaml:
    the verdict, the exit code, zero errors, and p99 under load over the idle p50 measured
    just before in the same run (absolute SLOs are for `make loadtest`)."""
    result = loadtest("--repository", str(demo_repository), "--duration", "30s", "--users", "4",
                      "--slo-file", str(REPO_ROOT / "tests" / "e2e" / "slo_gate.yaml"),
                      "--reports", str(tmp_path / "reports"), timeout=400)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    for protocol in ("http", "grpc"):
        assert f"PASS {protocol}.p99_over_idle_p50" in result.stdout
    assert "PASS error_rate: 0.000" in result.stdout and "idle p50 before the run" in result.stdout
    reports = tmp_path / "reports"
    assert (reports / "loadtest.html").stat().st_size > 0 and (reports / "loadtest_stats.csv").is_file()
    verdict = json.loads((reports / "slo_verdict.json").read_text(encoding="utf-8"))
    assert verdict["passed"] and set(verdict["idle_p50_ms"]) == {"http", "grpc"}
