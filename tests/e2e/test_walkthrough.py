"""The README's batch-job walkthrough, run as written against the demo repository that
``make build`` makes: only ``--rows`` is smaller, and the server's port is added."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

ROWS = "240"


def walkthrough() -> list[list[str]]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    code = block.split("```bash")[1].split("```")[0].replace("\\\n", " ")
    return [shlex.split(line) for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def as_run_here(argv: list[str], grpc_url: str) -> list[str]:
    if argv[0] != ".venv/bin/tce":
        return argv
    argv = [sys.executable, "-m", "tce.cli", *argv[1:]]
    if "--rows" in argv:
        argv[argv.index("--rows") + 1] = ROWS
    if argv[3] in ("predict", "evaluate") and "--input" in argv:
        argv += ["--url", grpc_url]  # the walkthrough's server listens on the default port
    return argv


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    repository, bundle = REPO_ROOT / "model_repository", REPO_ROOT / "artifacts" / "demo_bundle"
    if not (repository / "multimodal_model" / "1" / "model.pt").is_file() or not bundle.is_dir():
        pytest.skip("the demo repository is not built (make build)")
    commands = walkthrough()
    assert [c[1] for c in commands if c[0] == ".venv/bin/tce"] == \
        ["demo-data", "demo-data", "predict", "evaluate", "calibrate", "calibrate", "calibrate", "evaluate"]
    shutil.copytree(bundle, tmp_path / "artifacts" / "demo_bundle")
    env = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        for argv in commands:
            result = subprocess.run(as_run_here(argv, server.config.grpc_url), cwd=tmp_path, capture_output=True,
                                    text=True, timeout=600, env=env)
            assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr}"
    out = tmp_path / "out"
    assert (out / "predictions" / "_SUCCESS").is_file()
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert evaluation["records"] == int(ROWS) and evaluation["comparison"]["task"] == "abuse"
    assert {"abuse", "reason"} == set(evaluation["tasks"])
    header = (out / "evaluation" / "eval_predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["record_id", "label_abuse", "label_reason", "previous_abuse_score"]
    recalibrated = json.loads((out / "evaluation_recalibrated" / "metrics.json").read_text())
    assert recalibrated["calibration_version"][0].startswith("walkthrough@")
    assert (out / "calibration_report" / "reliability_abuse.png").is_file()
