"""The Makefile as a user drives it (dry runs: `make -n`): the repository is rebuilt when
any file of the bundle changes, and the servers take the ports a user gives."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def make_n(*args: str) -> str:
    # -o: the virtual environment counts as made (a newer pyproject.toml here must not cascade)
    result = subprocess.run(["make", "-n", "-o", ".venv/.installed-stamp", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture()
def built(bimodal_bundle, tmp_path):
    """A bundle and a repository built from it, the repository newer than every bundle file."""
    if not (REPO_ROOT / ".venv" / ".installed-stamp").exists():
        pytest.skip("make setup has not run here")
    bundle = shutil.copytree(bimodal_bundle.root, tmp_path / "bundle")
    model = tmp_path / "repository" / "multimodal_model" / "1" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"built")
    later = time.time() + 60
    os.utime(model, (later, later))
    return bundle, tmp_path / "repository"


def test_build_is_up_to_date_until_a_bundle_file_changes(built):
    bundle, repository = built
    args = (f"BUNDLE={bundle}", f"REPOSITORY={repository}", "build")
    assert "tce build" not in make_n(*args)
    table = next((bundle / "calibration").glob("*.npy"))
    later = time.time() + 120
    os.utime(table, (later, later))  # what `tce calibrate fit` does to the bundle
    assert f"tce build {bundle} --out {repository}" in make_n(*args)


def test_serve_and_demo_take_the_ports_given(built):
    bundle, repository = built
    common = (f"BUNDLE={bundle}", f"REPOSITORY={repository}")
    serve = make_n(*common, "serve", "HTTP_PORT=9100", "GRPC_PORT=9101", "METRICS_PORT=9102")
    assert "--http-port 9100 --grpc-port 9101 --metrics-port 9102" in serve
    assert "--http-port" not in make_n(*common, "serve")  # tce serve's own defaults: 8000, 8001, 8002
    assert "tce demo --repository" in make_n(*common, "demo", "HTTP_PORT=9200") and \
        "--http-port 9200" in make_n(*common, "demo", "HTTP_PORT=9200")


def test_the_walkthroughs_files_are_not_tracked_by_git():
    """The README's walkthrough writes data/ and out/ in the checkout."""
    for path in ("data/records.csv", "out/predictions/inference_predictions.csv"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored"
