"""`tce serve` as a process a person runs: it restarts a broken ensemble, stops on
the first signal, is killed by the second, and never leaves orphans or shared memory."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tce.repository.builder import write_repository
from tce.serving.server import free_ports
from tce_backends.canary import Canary

pytestmark = pytest.mark.e2e
SHM = Path("/dev/shm")


def _children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: PID -> command name."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split(" (", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == pid:
            found[int(stat.parent.name)] = name
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


class Serve:
    """A `tce serve` subprocess whose output lines are collected as they come."""

    def __init__(self, repository: Path, *extra: str) -> None:
        self.ports = free_ports()
        http, grpc, metrics = self.ports
        self.http_url = f"127.0.0.1:{http}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tce.cli", "serve", "--repository", str(repository), "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output so far:\n{''.join(self.output)}")

    def triton_pid(self) -> int:
        (pid,) = [p for p, name in _children(self.process.pid).items() if name == "tritonserver"]
        return pid

    def stub_pids(self, triton_pid: int) -> list[int]:
        return [p for p, name in _children(triton_pid).items() if name.startswith("triton_python")]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def repository(bimodal_bundle, tmp_path_factory) -> Path:
    return write_repository(bimodal_bundle, tmp_path_factory.mktemp("serve") / "repository")


def _gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.2)
    return False


def test_a_dead_step_is_noticed_and_the_server_restarted(repository):
    serve = Serve(repository, "--watch-interval", "1")
    try:
        serve.wait_for("Triton ready")
        triton = serve.triton_pid()
        victim = serve.stub_pids(triton)[0]
        os.kill(victim, signal.SIGKILL)  # Triton itself keeps reporting ready after this
        line = serve.wait_for("restarting Triton", timeout=60)
        assert "stopped answering" in line and "died" in line
        serve.wait_for("Triton ready again", timeout=120)
        assert Canary(serve.http_url).probe() is None
        assert not _alive(triton)
    finally:
        serve.process.send_signal(signal.SIGTERM)
        serve.close()


def test_serve_gives_up_with_a_clear_error_when_restarts_do_not_help(repository):
    serve = Serve(repository, "--watch-interval", "1", "--max-restarts", "0")
    try:
        serve.wait_for("Triton ready")
        triton = serve.triton_pid()
        stubs = serve.stub_pids(triton)
        os.kill(stubs[0], signal.SIGKILL)
        serve.wait_for("gave up after 0 restarts", timeout=60)
        assert serve.process.wait(timeout=60) == 3
        assert _gone([triton, *stubs])
    finally:
        serve.close()


def test_the_second_signal_kills_at_once_and_cleans_up(repository):
    serve = Serve(repository)
    try:
        serve.wait_for("Triton ready")
        triton = serve.triton_pid()
        stubs = serve.stub_pids(triton)
        serve.process.send_signal(signal.SIGINT)
        serve.wait_for("stopping Triton")
        serve.process.send_signal(signal.SIGINT)
        code = serve.process.wait(timeout=30)
        output = "".join(serve.output) + "".join(iter_queue(serve.lines))
        assert code in (0, 130), output
        assert "Traceback" not in output
        assert _gone([triton, *stubs])
        assert not list(SHM.glob(f"tce{serve.process.pid}_*"))
    finally:
        serve.close()


def iter_queue(lines: queue.Queue) -> list[str]:
    out = []
    while not lines.empty():
        out.append(lines.get())
    return out


def test_kill_9_of_serve_takes_triton_and_its_stubs_down_and_the_next_start_cleans_up(repository):
    serve = Serve(repository)
    serve.wait_for("Triton ready")
    triton = serve.triton_pid()
    stubs = serve.stub_pids(triton)
    os.kill(serve.process.pid, signal.SIGKILL)
    serve.close()
    assert _gone([triton, *stubs], timeout=60), "tritonserver or a stub outlived its launcher"
    # what a launcher killed together with its server leaves behind (Triton's own regions are named so)
    leftovers = [*SHM.glob(f"tce{serve.process.pid}_*"), SHM / f"tce{serve.process.pid}_0123abcd_region"]
    leftovers[-1].write_bytes(b"\0" * 64)
    again = Serve(repository)  # a later start removes what the dead launcher left
    try:
        again.wait_for("Triton ready")
        assert not any(p.exists() for p in leftovers)
    finally:
        again.process.send_signal(signal.SIGTERM)
        assert again.process.wait(timeout=60) == 0
        again.close()


def test_serve_through_the_gateway_and_stop_everything(repository):
    from tce_client import CalibratedClassifierClient
    from tce_gateway.errors import GatewayError
    from tce_gateway.launcher import find_nginx
    from tests.hostile import json_body, post_json

    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))
    serve = Serve(repository, "--gateway")
    try:
        serve.wait_for("gateway ready")
        http, grpc, _ = serve.ports
        with CalibratedClassifierClient(f"127.0.0.1:{grpc}", protocol="grpc") as client:
            (prediction,) = client.predict([{"dialogue": "hi"}], allow_missing_fields=True)
        assert prediction["abuse"].label
        huge = {"name": "numeric_features", "shape": [1, 1 << 40], "datatype": "FP64", "data": [1.0]}
        status, body = post_json(f"127.0.0.1:{http}", json_body(numeric_features=huge))
        assert status == 400 and b"refused by the gateway" in body
        children = _children(serve.process.pid)
        assert "nginx" in children.values() and "tritonserver" in children.values()
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=60) == 0
        assert _gone(list(children))
    finally:
        serve.close()


def test_stop_after_rejected_requests_is_graceful_and_removes_the_run_directory(repository):
    """A rejected request used to stay in flight for ever, so stopping waited out Triton's
    30 s exit timeout; now nothing is left in flight and the run directory goes."""
    from tests.hostile import json_body, post, post_json

    serve = Serve(repository)
    try:
        ready = serve.wait_for("Triton ready")
        run_dir = Path(ready.split("(log: ")[1].rstrip(")\n")).parent
        for body in (json.dumps(json_body()).encode().replace(b"hello", b"\xff\xfe"),
                     json.dumps(json_body()).replace("2.0", "Infinity").encode()):
            assert post(serve.http_url, body)[0] == 400
        assert post_json(serve.http_url, json_body())[0] == 200
        log = (run_dir / "tritonserver.log")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=60) == 0
        serve.wait_for("Triton stopped.")
        said = "".join(serve.output)
        assert "still finishing" not in said, said  # nothing left in flight to wait for
        assert not run_dir.exists(), "a clean stop removes its run directory"
    finally:
        serve.close()
    assert not log.exists()
