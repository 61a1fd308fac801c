"""docker/entrypoint.sh, the images' entrypoint, run here with the embedded tritonserver
standing in for the image's (no Docker engine on these machines): it refuses to start
without an admin key, restricts the admin endpoints, forwards SIGTERM, restarts a Triton
that exits or whose step died (the canary watchdog stops it), and for SageMaker's `serve`
puts the gateway in front of a Triton on loopback."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tce.repository.builder import write_repository
from tce.serving.server import _library_path, _prepare_backends, free_ports, remove_shared_memory, triton_root
from tce_backends.canary import Canary
from tests.conftest import REPO_ROOT
from tests.hostile import post

pytestmark = pytest.mark.e2e
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"


@pytest.fixture()
def image_like(tmp_path):
    """A PATH whose `tritonserver` is the embedded one, set up as the image's is."""
    prefix = f"tce{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    backends = _prepare_backends(tmp_path / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").write_text(
        "#!/bin/sh\n"
        f'exec {triton_root() / "bin" / "tritonserver"} --backend-directory={backends} '
        f'--backend-config=python,shm-region-prefix-name={prefix} "$@"\n', encoding="utf-8")
    (bin_dir / "tritonserver").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(os.sys.executable).parent}:{os.environ['PATH']}",
           "LD_LIBRARY_PATH": _library_path(), "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}
    yield env
    remove_shared_memory(prefix)


def _run(env, *args, timeout=30):
    return subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("key", ["", "short", "has,a-comma-in-the-middle"])
def test_no_server_without_a_usable_admin_key(image_like, key):
    result = _run({**image_like, "TCE_ADMIN_KEY": key}, "--model-repository=/nonexistent")
    assert result.returncode == 64
    assert "no usable admin key" in result.stderr and "make admin-key" in result.stderr


def test_an_unreadable_key_file_is_named(image_like, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    key_file = tmp_path / "key"
    key_file.write_text("k" * 32)
    key_file.chmod(0)
    result = _run({**image_like, "TCE_ADMIN_KEY_FILE": str(key_file)}, "--model-repository=/nonexistent")
    assert result.returncode == 64 and "cannot read the admin key file" in result.stderr


def test_restricted_server_watchdog_and_signals(image_like, bimodal_bundle, tmp_path):
    repository = write_repository(bimodal_bundle, tmp_path / "repository")
    http, grpc, metrics = free_ports()
    key_file = tmp_path / "admin-key"
    key_file.write_text("a-proper-admin-key-of-32-chars!!\n")
    env = {**image_like, "TCE_ADMIN_KEY_FILE": str(key_file), "TCE_WATCH_INTERVAL": "1",
           "TCE_CANARY_URL": f"127.0.0.1:{http}"}
    args = [f"--model-repository={repository}", f"--http-port={http}", f"--grpc-port={grpc}",
            f"--metrics-port={metrics}", "--model-control-mode=explicit", "--load-model=*"]

    log = tmp_path / "container.log"

    def start() -> subprocess.Popen:
        with open(log, "w") as output:  # a file: Triton's log would fill a pipe nobody reads
            process = subprocess.Popen(["sh", str(ENTRYPOINT), *args], env=env, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while Canary(f"127.0.0.1:{http}").probe() is not None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        return process

    process = start()
    try:
        url = f"127.0.0.1:{http}"
        assert post(url, b"{}", path="/v2/repository/index")[0] == 403
        admin = {"tce-admin-key": key_file.read_text().strip()}
        assert post(url, b"{}", path="/v2/repository/index", headers=admin)[0] == 200
        process.send_signal(signal.SIGTERM)  # compose stop
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    process = start()
    try:
        triton = int(subprocess.run(["pgrep", "-P", str(process.pid), "-f", "tritonserver"], capture_output=True,
                                    text=True).stdout.split()[0])
        stubs = subprocess.run(["pgrep", "-P", str(triton)], capture_output=True, text=True).stdout.split()
        os.kill(int(stubs[0]), signal.SIGKILL)  # Triton stays "ready"; the watchdog must notice
        _wait_for(log, "the ensemble stopped answering (the watchdog stopped it); restarting it", process)
        _wait_until_answering(http, process, log)
        triton = _triton_child(process)
        os.kill(triton, signal.SIGKILL)  # Triton itself dies: the entrypoint starts it again
        _wait_for(log, "tritonserver exited with status 137; restarting it", process)
        _wait_until_answering(http, process, log)
        assert _triton_child(process) != triton
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _triton_child(process: subprocess.Popen) -> int:
    found = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "tritonserver"], capture_output=True, text=True)
    return int(found.stdout.split()[0])


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def _wait_until_answering(http: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while Canary(f"127.0.0.1:{http}").probe() is not None:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def test_serve_runs_sagemaker_mode_on_the_packaged_archive(image_like, bimodal_bundle, tmp_path):
    """`docker run IMAGE serve`, as SageMaker starts a container, on the archive of
    `tce package-sagemaker`: /ping answers and /invocations runs the ensemble."""
    import json
    import tarfile
    import urllib.request

    from tce.jobs.sagemaker import package_sagemaker

    package_sagemaker(bimodal_bundle.root, tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        archive.extractall(tmp_path / "opt_ml_model", filter="data")
    http, grpc, metrics, sagemaker = free_ports(4)
    env = {**image_like, "SAGEMAKER_MODEL_DIR": str(tmp_path / "opt_ml_model"),
           "SAGEMAKER_BIND_TO_PORT": str(sagemaker), "TCE_CANARY_URL": f"127.0.0.1:{http}",
           "TCE_ADMIN_KEY_FILE": str(tmp_path / "no-such-key-file")}
    log = tmp_path / "container.log"
    with open(log, "w") as output:
        process = subprocess.Popen(["sh", str(ENTRYPOINT), "serve", f"--http-port={http}", f"--grpc-port={grpc}",
                                    f"--metrics-port={metrics}"], env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{sagemaker}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        body = {"inputs": [{"name": "dialogue", "shape": [1, 1], "datatype": "BYTES", "data": ["buyer: hi"]},
                           {"name": "numeric_features", "shape": [1, 5], "datatype": "FP64",
                            "data": [12.5, 100, 0, 4.5, 2]},
                           {"name": "categorical_features", "shape": [1, 3], "datatype": "BYTES",
                            "data": ["card", "US", "books"]}]}
        request = urllib.request.Request(f"http://127.0.0.1:{sagemaker}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            names = {o["name"] for o in json.loads(response.read())["outputs"]}
        assert {"abuse_raw", "abuse_calibrated", "reason_raw", "reason_calibrated"} <= names, names
        # SageMaker's model management (load any directory, no key) is not served
        assert post(f"127.0.0.1:{sagemaker}", json.dumps({"model_name": "x", "url": str(tmp_path)}).encode(),
                    path="/models")[0] == 404
        assert "Started Sagemaker HTTPService" not in log.read_text()  # Triton's own listener never runs
        assert f"127.0.0.1:{http}" in log.read_text()  # Triton's own HTTP on loopback
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
