"""Start, watch and stop the gateway: nginx plus the door workers.

``Gateway`` is what ``tce serve --gateway`` and ``python -m tce_gateway`` (the images)
run. A door worker or nginx that dies is started again by ``check()``; ``stop()``
ends them all by PID and removes the run directory."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tce_gateway.config import DEFAULT_MODEL, DoorConfig, GatewayConfig, PredictionLogConfig, Replica
from tce_gateway.errors import GatewayError
from tce_gateway.nginx import TEMP_DIRS, NginxMissing, find_nginx, render
from tce_gateway.processes import die_with_parent, free_ports, listening
from tce_gateway.worker import config_to_json

__all__ = ["Gateway", "GatewayError", "NginxMissing", "find_nginx"]


@dataclass
class Gateway:
    replicas: tuple[Replica, ...]
    config: GatewayConfig = field(default_factory=GatewayConfig)
    default_model: str = DEFAULT_MODEL
    admin_key: str | None = None
    triton_admin_key: str | None = None
    repository: Path | str | None = None   # read for releases.json: canary and shadow traffic
    nginx: subprocess.Popen | None = field(default=None, init=False)
    workers: list[subprocess.Popen] = field(default_factory=list, init=False)
    run_dir: Path | None = field(default=None, init=False)
    restarts: int = field(default=0, init=False)
    _door: DoorConfig | None = field(default=None, init=False)
    _log_read: int = field(default=0, init=False)

    @classmethod
    def for_server(cls, http_url: str, grpc_url: str, **config: object) -> "Gateway":
        """In front of one Triton; ``config`` are ``GatewayConfig`` fields."""
        return cls((Replica(http_url, grpc_url),), GatewayConfig(**config))  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        return self.config.address

    @property
    def http_port(self) -> int | None:
        return self.config.http_port

    @property
    def grpc_port(self) -> int | None:
        return self.config.grpc_port

    @property
    def sagemaker_port(self) -> int | None:
        return self.config.sagemaker_port

    def start(self, timeout_s: float = 20.0) -> "Gateway":
        binary = find_nginx()
        prediction_log = _prediction_log(self.config)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"tce-gateway-{os.getpid()}-"))
        os.chmod(self.run_dir, 0o755)  # nginx workers run as nobody when started by root
        for name in TEMP_DIRS.values():
            (self.run_dir / name).mkdir(mode=0o777)
            os.chmod(self.run_dir / name, 0o777)
        door_http, door_grpc = free_ports(2)
        self._door = DoorConfig(self.replicas, door_http, door_grpc, default_model=self.default_model,
                                admin_key=self.admin_key, triton_admin_key=self.triton_admin_key,
                                limits=self.config.limits,
                                repository=str(Path(self.repository).resolve()) if self.repository else None,
                                prediction_log=prediction_log)
        secret = self.run_dir / "door.json"  # holds the keys: owner-only, never on a command line
        descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(config_to_json(self._door))
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render(self.config, door_http, door_grpc, self.run_dir), encoding="utf-8")
        check = subprocess.run([binary, "-t", "-q", "-p", str(self.run_dir), "-c", str(conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            self.stop()
            raise GatewayError(f"nginx refused the gateway configuration: {check.stderr.strip()}")
        try:
            self.workers = [self._start_worker(index) for index in range(self.config.door_workers)]
            self._wait(lambda: listening("127.0.0.1", door_http) and listening("127.0.0.1", door_grpc),
                       timeout_s, "the door workers")
            self.nginx = self._start_nginx()
            ports = [p for p in (self.http_port, self.grpc_port, self.sagemaker_port) if p is not None]
            self._wait(lambda: all(listening(self.address, p) for p in ports), timeout_s, "nginx")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_worker(self, index: int) -> subprocess.Popen:
        """Door worker ``index`` (its prediction log file is ``predictions-<index>.jsonl``)."""
        assert self.run_dir is not None
        home = Path(__file__).resolve().parents[2]  # the checkout, or /opt/tce in the images
        paths = [str(Path(__file__).resolve().parents[1]), str(home / "client"), str(home / "python_backends")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*paths, os.environ.get("PYTHONPATH")]))}
        log = open(self.run_dir / "door.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen([sys.executable, "-m", "tce_gateway.worker", str(self.run_dir / "door.json"),
                                     str(index)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=die_with_parent(os.getpid()))
        finally:
            log.close()

    def _start_nginx(self) -> subprocess.Popen:
        assert self.run_dir is not None
        conf = self.run_dir / "nginx.conf"
        return subprocess.Popen([find_nginx(), "-p", str(self.run_dir), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent(os.getpid(), signal.SIGQUIT))

    def _wait(self, ready: object, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [p for p in [*self.workers, *([self.nginx] if self.nginx else [])] if p.poll() is not None]
            if dead:
                raise GatewayError(f"{what} exited at start: {self.log_tail()}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise GatewayError(f"{what} did not listen within {timeout_s:.0f} s: {self.log_tail()}")

    def check(self) -> list[str]:
        """Start again whatever part died; says what was restarted."""
        restarted = []
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                self.workers[index] = self._start_worker(index)
                restarted.append(f"door worker (exit {worker.returncode})")
        if self.nginx is not None and self.nginx.poll() is not None:
            code = self.nginx.returncode
            self.nginx = self._start_nginx()
            restarted.append(f"nginx (exit {code})")
        self.restarts += len(restarted)
        return restarted

    def door_lines(self) -> list[str]:
        """Whole lines the door workers logged since the last call (shadow and canary counts,
        releases.json problems), for a foreground gateway to pass on."""
        path = self.run_dir / "door.log" if self.run_dir else None
        if path is None or not path.exists():
            return []
        with open(path, "rb") as handle:
            handle.seek(self._log_read)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._log_read += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()

    def log_tail(self, chars: int = 2000) -> str:
        parts = []
        for name in ("door.log", "error.log"):
            path = self.run_dir / name if self.run_dir else None
            if path is not None and path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace")[-chars:].strip())
        return "\n".join(p for p in parts if p) or "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        nginx, self.nginx = self.nginx, None
        workers, self.workers = self.workers, []
        if nginx is not None and nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for process in [*([nginx] if nginx else []), *workers]:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=5)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _prediction_log(config: GatewayConfig) -> PredictionLogConfig | None:
    """The prediction log's settings with its directory made absolute and checked writable
    here, so that a mistake is one line before any worker starts."""
    log = config.prediction_log
    if log is None:
        return None
    directory = Path(log.directory).expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GatewayError(f"prediction log: cannot make {directory}: {error.strerror}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise GatewayError(f"prediction log: {directory} is not writable for uid {os.getuid()}")
    return dataclasses.replace(log, directory=str(directory))
