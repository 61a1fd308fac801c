"""Fault drills under load: `tce serve` with four clients sending requests without pause,
then a process is killed with SIGKILL. Each drill prints the requests sent, how many
failed, and how long until every request succeeded again.

- one Triton, callers on its ports: a killed tritonserver or Python step costs the
  requests of the restart (seconds), then everything answers again;
- two Tritons behind the gateway: the door sends a request a dead replica dropped (or
  refused because its step died) to the other one, so no request fails while the dead
  replica is restarted."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest

from tce.repository.builder import write_repository
from tce_gateway.errors import GatewayError
from tce_gateway.launcher import find_nginx
from tests.attacks import _grpc_request
from tests.e2e.test_serve_lifecycle import Serve, _children
from tests.hostile import json_body, post

pytestmark = pytest.mark.e2e
CLIENTS = 4
PAUSE_AFTER_FAILURE_S = 0.05  # a client's pause before it tries again: failures count at about 20/s per client


@dataclass
class Load:
    """Clients that send requests back to back and record when each failed."""

    http_url: str
    grpc_url: str | None = None
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _http(self) -> None:
        body = json.dumps(json_body()).encode()
        while not self.stop.is_set():
            status, answer = post(self.http_url, body, timeout=30)
            self.results.append((time.monotonic(), status == 200, f"{status} {answer[:100]!r}"))
            if status != 200:
                time.sleep(PAUSE_AFTER_FAILURE_S)

    def _grpc(self) -> None:
        payload = _grpc_request().SerializeToString()
        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while not self.stop.is_set():
                try:
                    call(payload, timeout=30)
                    self.results.append((time.monotonic(), True, ""))
                except grpc.RpcError as error:
                    self.results.append((time.monotonic(), False, f"{error.code()} {error.details()}"))
                    time.sleep(PAUSE_AFTER_FAILURE_S)

    def __enter__(self) -> "Load":
        kinds = [self._http, self._grpc] if self.grpc_url else [self._http]
        self.threads = [threading.Thread(target=kinds[i % len(kinds)], daemon=True) for i in range(CLIENTS)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)

    def report(self, name: str, killed_at: float) -> tuple[int, float]:
        """Failed requests, and seconds from the kill until requests succeed again."""
        failed = [t for t, ok, _ in self.results if not ok]
        after = [t for t, ok, _ in self.results if ok and t > (max(failed) if failed else killed_at)]
        recovery = (min(after) - killed_at) if failed and after else 0.0
        errors = sorted({why for _, ok, why in self.results if not ok})[:3]
        print(f"drill: {name}: {len(self.results)} requests, {len(failed)} failed, every request answered again "
              f"{recovery:.1f} s after the kill{'; errors: ' + '; '.join(errors) if errors else ''}")
        return len(failed), recovery


def _tritons(serve: Serve) -> list[int]:
    return sorted(pid for pid, name in _children(serve.process.pid).items() if name == "tritonserver")


def _wait_until_answering(load: Load, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        recent = [ok for t, ok, _ in load.results if t > time.monotonic() - seconds]
        if len(recent) > 5 and all(recent):
            return
        time.sleep(0.5)
    raise AssertionError("the load never ran clean")


def _drill(serve: Serve, load: Load, kill: int, name: str, ready_line: str) -> tuple[int, float]:
    _wait_until_answering(load)
    killed_at = time.monotonic()
    os.kill(kill, signal.SIGKILL)
    serve.wait_for(ready_line, timeout=120)
    _wait_until_answering(load)
    return load.report(name, killed_at)


@pytest.fixture(scope="module")
def repository(bimodal_bundle, tmp_path_factory):
    return write_repository(bimodal_bundle, tmp_path_factory.mktemp("drills") / "repository")


@pytest.fixture(scope="module")
def nginx():
    try:
        find_nginx()
    except GatewayError as missing:
        pytest.skip(str(missing))


def test_kill_9_of_tritonserver_under_load_is_followed_by_a_restart(repository):
    serve = Serve(repository, "--watch-interval", "1")
    try:
        serve.wait_for("Triton ready")
        with Load(serve.http_url) as load:
            failed, recovery = _drill(serve, load, _tritons(serve)[0], "kill -9 tritonserver, one Triton",
                                      "Triton ready again")
            assert "tritonserver exited (exit code -9); restarting Triton" in "".join(serve.output)
            stubs = [p for p, n in _children(_tritons(serve)[0]).items() if n.startswith("triton_python")]
            load.results.clear()
            step_failed, step_recovery = _drill(serve, load, stubs[0], "kill -9 a Python step, one Triton",
                                                "Triton ready again")
        assert recovery > 0 and failed > 0  # the gap a single server cannot hide: its restart
        assert step_recovery > 0 and step_failed > 0
    finally:
        serve.process.send_signal(signal.SIGTERM)
        serve.close()


def test_kill_9_of_a_replica_under_load_fails_no_request(repository, nginx):
    serve = Serve(repository, "--replicas", "2", "--watch-interval", "1")
    try:
        serve.wait_for("gateway ready")
        http, grpc_port, _ = serve.ports
        with Load(f"127.0.0.1:{http}", f"127.0.0.1:{grpc_port}") as load:
            first, _ = _drill(serve, load, _tritons(serve)[0], "kill -9 tritonserver, two replicas behind the gateway",
                              "Triton ready again")
            triton = _tritons(serve)[1]
            stubs = [p for p, n in _children(triton).items() if n.startswith("triton_python")]
            load.results.clear()
            second, _ = _drill(serve, load, stubs[0], "kill -9 a Python step, two replicas behind the gateway",
                               "Triton ready again")
        assert first == 0 and second == 0
    finally:
        serve.process.send_signal(signal.SIGTERM)
        serve.close()
