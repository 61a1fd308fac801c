"""``make gpu-check`` exists, refuses cleanly where there is no CUDA device, and serves a copy of the
repository whose model step asks for CUDA without touching the built one. Nothing here needs a GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import gpu_check
from tce.jobs.build import build
from tce.repository.builder import read_config
from tce_backends.graph import MULTIMODAL_MODEL

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_make_gpu_check_runs_the_script_on_the_built_repository():
    # -n prints the recipe (after any build steps it would need) without running anything.
    # The venv counts as made (as in test_make.py); under `make test` make would name directories.
    result = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.installed-stamp", "gpu-check"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "-m benchmarks.gpu_check" in last and "--repository model_repository" in last


def test_without_cuda_it_refuses_in_one_line_before_starting_anything(tmp_path):
    # An empty CUDA_VISIBLE_DEVICES hides every GPU, so this holds on a GPU machine too.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out),
                             "--repository", str(tmp_path / "missing")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device: "), result.stderr
    assert not out.exists()


def test_the_served_copy_asks_for_cuda_and_leaves_the_built_repository_alone(bimodal_bundle, tmp_path):
    _, repository = build(bimodal_bundle.root, tmp_path / "repository")
    config = repository / MULTIMODAL_MODEL / "config.pbtxt"
    before = config.read_text(encoding="utf-8")
    copy = gpu_check.gpu_copy(repository, tmp_path / "copy", "cuda:0")
    served = read_config(copy / MULTIMODAL_MODEL / "config.pbtxt")
    assert served.parameters["device"].string_value == "cuda:0"
    original = read_config(config)
    original.parameters["device"].string_value = "cuda:0"
    assert served == original  # the device, and nothing else, changed
    assert config.read_text(encoding="utf-8") == before
    assert (copy / MULTIMODAL_MODEL / "1" / "model.pt").read_bytes() == (
        repository / MULTIMODAL_MODEL / "1" / "model.pt").read_bytes()


class _Task:
    def __init__(self, raw: list[float], calibrated: list[float]) -> None:
        self.raw, self.calibrated = np.array(raw, np.float32), np.array(calibrated, np.float32)


def test_max_gap_sees_a_difference_in_raw_or_calibrated_scores():
    reference = {"t_raw": np.array([[0.2, 0.8]], np.float32), "t_calibrated": np.array([[0.3, 0.7]], np.float32)}
    same = [{"t": _Task([0.2, 0.8], [0.3, 0.7])}]
    off = [{"t": _Task([0.2, 0.8], [0.3, 0.7 + 2e-5])}]
    assert gpu_check.max_gap(same, reference, ["t"]) == 0.0
    assert gpu_check.max_gap(off, reference, ["t"]) > gpu_check.TOLERANCE


def test_placement_counts_the_model_step_on_cuda_only_with_a_cuda_context():
    on = gpu_check.Placement("cuda:0", {"11 multimodal_model": ["/dev/nvidia0"], "12 preprocessor": []}, "")
    config_only = gpu_check.Placement("cuda:0", {"11 multimodal_model": []}, "")
    no_stub = gpu_check.Placement("cuda:0", {"12 preprocessor": ["/dev/nvidia0"]}, "")
    assert on.on_cuda and not config_only.on_cuda and not no_stub.on_cuda
