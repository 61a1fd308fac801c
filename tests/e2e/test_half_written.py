"""Nothing half-written: a damaged model, a build or a fit that fails or is killed half way,
leave the served repository and the bundle byte for byte as they were, and the
repository still serves."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce.jobs.build import build
from tce.jobs.calibrate import fit
from tce.lib.demo_data import make_dataset
from tce.lib.staging import repository_lock, tree_digest
from tce.repository.builder import RepositoryOptions
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce.trainer.training import task_labels
from tce_backends import calibration, graph
from tce_backends.bundle import CALIBRATION_DIR, MODEL_FILE, Bundle
from tce_backends.errors import UsageError
from tce_client import CalibratedClassifierClient

pytestmark = pytest.mark.e2e
ENV = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}


def tce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tce.cli", *args], capture_output=True, text=True, timeout=300,
                          env=ENV)


def one_clear_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def leftovers(path: Path) -> list[str]:
    """Hidden staging or previous trees and lock files next to ``path``."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@pytest.fixture(scope="module")
def built(bimodal_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bimodal bundle's repository, with a file of someone else in it."""
    repository = tmp_path_factory.mktemp("half_written") / "model_repository"
    repository.mkdir()
    (repository / "NOTES.md").write_text("ours, not tce's\n")
    build(bimodal_bundle.root, repository)
    return repository


@pytest.fixture()
def repository(built: Path, tmp_path: Path) -> Path:
    """A copy of the built repository for one test to break."""
    copy = tmp_path / "model_repository"
    shutil.copytree(built, copy, symlinks=True)
    return copy


@pytest.fixture()
def bundle_copy(bimodal_bundle: Bundle, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, copy)
    return copy


def run_until(script: str, marker: Path, *args: str) -> subprocess.Popen:
    """Start ``script`` in a subprocess and return once it wrote ``marker`` (it then sleeps)."""
    process = subprocess.Popen([sys.executable, "-c", script, str(marker), *args], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the subprocess ended first: {process.communicate()}")
        assert time.monotonic() < deadline, "the subprocess never reached the point"
        time.sleep(0.1)
    return process


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


# -- build -------------------------------------------------------------------------

def test_a_damaged_model_is_one_line_and_the_repository_still_serves(repository, bundle_copy, bimodal_bundle):
    model = bundle_copy / MODEL_FILE
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a copy cut short
    before = tree_digest(repository)
    line = one_clear_line(tce("build", str(bundle_copy), "--out", str(repository)),
                          str(model), "not a loadable TorchScript model", "PytorchStreamReader failed",
                          "copy or export it again")
    assert "internal miniz error" not in line
    assert tree_digest(repository) == before
    assert leftovers(repository) == []
    records = make_dataset(6, seed=4).drop(columns=["abuse", "reason", "events", "record_id"]).to_dict(orient="records")
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as server:
        with CalibratedClassifierClient(server.config.http_url) as client:
            predictions = client.predict(records)
    assert len(predictions) == 6
    assert {p.calibration_version for p in predictions} == {bimodal_bundle.calibrator.version}


def test_weights_saved_instead_of_a_torchscript_model_are_named(repository, bundle_copy):
    import torch

    torch.save({"weight": torch.zeros(2)}, bundle_copy / MODEL_FILE)
    before = tree_digest(repository)
    one_clear_line(tce("build", str(bundle_copy), "--out", str(repository)),
                   "not a loadable TorchScript model", "torch.jit.save")
    assert tree_digest(repository) == before


def test_a_build_that_fails_half_way_changes_nothing(repository, bimodal_bundle, monkeypatch):
    from tce.repository import builder

    real = builder.write_step_version

    def fails_at_the_calibrator(bundle, step, version_dir, *more):
        real(bundle, step, version_dir, *more)
        if step == graph.CALIBRATOR:
            raise OSError(28, "No space left on device", str(version_dir))

    (repository / "their_model" / "1").mkdir(parents=True)  # another team's model, not served here
    (repository / "their_model" / "config.pbtxt").write_text('name: "their_model"\nbackend: "python"\n')
    before = tree_digest(repository)
    monkeypatch.setattr(builder, "write_step_version", fails_at_the_calibrator)
    options = RepositoryOptions(max_batch_size=8)  # a build that would change every config
    with pytest.raises(Exception, match="No space left on device.*the repository was left as it was"):
        build(bimodal_bundle.root, repository, options)
    assert tree_digest(repository) == before
    assert leftovers(repository) == []
    monkeypatch.undo()
    build(bimodal_bundle.root, repository, options)
    assert tree_digest(repository) != before
    assert (repository / "their_model" / "config.pbtxt").is_file()  # others' models survive a build
    assert (repository / "NOTES.md").read_text() == "ours, not tce's\n"


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tce.cli import main
    from tce.repository import builder

    marker, bundle, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    real = builder.write_step_version

    def stops_after_the_model(bundle, step, version_dir, *more):
        real(bundle, step, version_dir, *more)
        if step == "multimodal_model":
            marker.write_text("the model is half copied in")
            time.sleep(600)

    builder.write_step_version = stops_after_the_model
    sys.exit(main(["build", bundle, "--out", out, "--max-batch-size", "8"]))
""")


def test_a_build_killed_half_way_leaves_the_repository_and_the_next_build_finishes(
        repository, bimodal_bundle, tmp_path):
    before = tree_digest(repository)
    process = run_until(KILLED_BUILD, tmp_path / "marker", str(bimodal_bundle.root), str(repository))
    kill(process)
    assert tree_digest(repository) == before
    # the dead build's lock file (no longer locked: the kernel let go) and its staging tree
    assert [name.split("-")[0] for name in leftovers(repository)] == [".model_repository.lock",
                                                                       ".model_repository.staging"]
    result = tce("build", str(bimodal_bundle.root), "--out", str(repository), "--max-batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert leftovers(repository) == []
    assert "max_batch_size: 8" in (repository / graph.CALIBRATOR / "config.pbtxt").read_text()


def test_a_second_build_waits_for_the_first_and_names_it(repository, bimodal_bundle):
    before = tree_digest(repository)
    with repository_lock(repository, command="tce build the-other-bundle"):
        line = one_clear_line(tce("build", str(bimodal_bundle.root), "--out", str(repository),
                                  "--lock-timeout", "0.5"),
                              f"{repository} is locked by tce build the-other-bundle", f"pid {os.getpid()}")
    assert "run this again when it has finished" in line
    assert tree_digest(repository) == before


# -- calibrate fit -----------------------------------------------------------------

@pytest.fixture()
def predictions(bimodal_bundle: Bundle, tmp_path: Path) -> Path:
    """Labelled raw probabilities in the multi-task file layout (their values do not matter here)."""
    frame = make_dataset(300, seed=8)
    rng = np.random.default_rng(8)
    columns = {}
    for task in bimodal_bundle.manifest.tasks:
        probabilities = rng.dirichlet(np.ones(task.num_classes), size=len(frame))
        for i in range(task.num_classes):
            columns[f"{task.name}_prob_class_{i}"] = probabilities[:, i]
        columns[f"label_{task.name}"] = task_labels(task, frame)
    path = tmp_path / "predictions.parquet"
    pd.DataFrame(columns).to_parquet(path)
    return path


def test_a_fit_that_fails_half_way_leaves_the_bundle(bundle_copy, predictions, monkeypatch):
    before = tree_digest(bundle_copy)
    real, saved = calibration.np.save, []

    def fails_after_one_table(path, array, **kwargs):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(path)
        real(path, array, **kwargs)

    monkeypatch.setattr(calibration.np, "save", fails_after_one_table)
    with pytest.raises(UsageError, match="No space left on device.*calibration was left as it was"):
        fit(bundle_copy, predictions, points=50, label="half")
    monkeypatch.undo()
    assert saved  # it failed half way through the tables
    assert tree_digest(bundle_copy) == before
    assert leftovers(bundle_copy / CALIBRATION_DIR) == []


KILLED_FIT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tce.cli import main
    from tce_backends import calibration

    marker, bundle, predictions = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    real = calibration.np.save

    def stops_after_one_table(path, array, **kwargs):
        real(path, array, **kwargs)
        marker.write_text("one table written")
        time.sleep(600)

    calibration.np.save = stops_after_one_table
    sys.exit(main(["calibrate", "fit", "--bundle", bundle, "--predictions", predictions, "--points", "50",
                   "--version", "killed"]))
""")


def test_a_fit_killed_half_way_leaves_the_bundle_and_the_next_fit_finishes(
        bundle_copy, predictions, bimodal_bundle, tmp_path):
    before = tree_digest(bundle_copy)
    process = run_until(KILLED_FIT, tmp_path / "marker", str(bundle_copy), str(predictions))
    kill(process)
    assert tree_digest(bundle_copy / CALIBRATION_DIR) == tree_digest(bimodal_bundle.root / CALIBRATION_DIR)
    assert [name.split("-")[0] for name in leftovers(bundle_copy / CALIBRATION_DIR)] == [".calibration.staging"]
    assert Bundle.load(bundle_copy).calibrator.version == bimodal_bundle.calibrator.version  # still calibrated
    shutil.rmtree(bundle_copy / leftovers(bundle_copy / CALIBRATION_DIR)[0])
    assert tree_digest(bundle_copy) == before  # the leftover is all the kill added
    process = run_until(KILLED_FIT, tmp_path / "marker2", str(bundle_copy), str(predictions))
    kill(process)
    result = tce("calibrate", "fit", "--bundle", str(bundle_copy), "--predictions", str(predictions),
                 "--points", "50", "--version", "after")
    assert result.returncode == 0, result.stderr
    assert leftovers(bundle_copy / CALIBRATION_DIR) == []
    assert Bundle.load(bundle_copy).calibrator.version.startswith("after@")
