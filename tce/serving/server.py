"""Run the Triton server that ships inside the nvidia-pytriton wheel.

The wheel holds ``tritonserver``, the Python backend and one backend stub per
Python version. ``EmbeddedServer`` lays out a backend directory with the stub for
the running interpreter, sets the library path, gives the server its own shared
memory prefix, ports, id and admin key, and waits until *that* server is ready (a
server already on the port is never mistaken for it). The server dies with the
process that started it. ``stop`` terminates it by PID and removes its shared
memory and run directory; a later start removes what a killed launcher left.

``serve_forever`` is ``tce serve``: it watches the ensemble with a canary inference
and restarts Triton when a step stops answering.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from tce_backends.canary import Canary, Watch

if TYPE_CHECKING:
    from tce.serving.gateway import Gateway
from tce.serving.processes import die_with_parent, kill_group, pid_alive
from tce.serving.security import generate_admin_key, restricted_api_args, write_admin_key
from tce_backends.errors import TceError
from tce_client.client import DEFAULT_MODEL

# The Triton inside nvidia-pytriton 0.7.0, and the NGC image of the same release (docker/Dockerfile).
TRITON_VERSION = "2.51.0"
NGC_RELEASE = "24.10"
SHM_DIR = Path("/dev/shm")
RUN_DIR_PREFIX = "tce-triton-"
ADMIN_KEY_FILE = "admin-key"
LOG_FILE = "tritonserver.log"


class ServerError(TceError):
    """The embedded server could not be started or did not become ready."""


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    model_control_mode: str = "none"  # "none" or "explicit"
    load_models: tuple[str, ...] = ()  # with explicit control: models to load at start ("*" for all)
    model_config_name: str = ""
    log_verbose: int = 0
    startup_timeout_s: float = 180.0
    admin_key: str | None = None  # None: a fresh random key per server (EmbeddedServer.admin_key)
    extra_args: tuple[str, ...] = ()
    # SageMaker's protocol (/ping, /invocations of default_model) on this port. Triton 2.51 binds it
    # to every interface (no address option), as a SageMaker container needs.
    sagemaker_port: int | None = None
    default_model: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        repository = Path(self.model_repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} does not exist; build it first (make build)")
        ports = tuple(self.ports.values())
        if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise ServerError(f"ports must be distinct values in 1..65535, got {ports}")
        if self.model_control_mode not in ("none", "explicit"):
            raise ServerError(f"model_control_mode must be 'none' or 'explicit', got {self.model_control_mode!r}")
        object.__setattr__(self, "model_repository", repository.resolve())

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def ports(self) -> dict[str, int]:
        ports = {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}
        return ports if self.sagemaker_port is None else {**ports, "SageMaker": self.sagemaker_port}

    @property
    def sagemaker_url(self) -> str | None:
        return None if self.sagemaker_port is None else f"{self.host}:{self.sagemaker_port}"


def free_ports(count: int = 3) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ports_in_use(config: ServerConfig) -> list[str]:
    """The configured ports something else already listens on."""
    taken = []
    for name, port in config.ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, port))
            except OSError:
                taken.append(f"{name} port {port}")
    return taken


def triton_root() -> Path:
    import pytriton

    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise ServerError(f"no tritonserver binary under {root}; is nvidia-pytriton installed?")
    return root


def _library_path() -> str:
    import pytriton

    wheel_libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    parts = [str(wheel_libs), sysconfig.get_config_var("LIBDIR") or ""]
    existing = os.environ.get("LD_LIBRARY_PATH")
    return ":".join(p for p in [*parts, existing] if p)


def _prepare_backends(run_dir: Path) -> Path:
    """backends/python with the stub matching this interpreter (symlinks, no copies)."""
    root = triton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the pytriton wheel has no Python backend stub for Python {version}")
    python_dir = run_dir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.name != "__pycache__":
            (python_dir / item.name).symlink_to(item)
    (python_dir / "triton_python_backend_stub").symlink_to(stub)
    return run_dir / "backends"


def remove_shared_memory(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    removed = []
    if shm_dir.is_dir():
        for region in shm_dir.glob(f"{prefix}*"):
            try:
                region.unlink()
                removed.append(region.name)
            except OSError:
                pass
    return removed


def remove_stale_runs(shm_dir: Path = SHM_DIR, tmp_dir: Path | None = None) -> list[str]:
    """Shared-memory regions and run directories of launchers that died without
    cleaning up (their PID is part of every name and is no longer alive)."""
    removed = []
    for region in shm_dir.glob("tce*_*") if shm_dir.is_dir() else ():
        match = re.fullmatch(r"tce(\d+)_[0-9a-f]{8}_.*", region.name)
        if match and not pid_alive(int(match.group(1))):
            removed += remove_shared_memory(region.name, shm_dir)
    for run_dir in Path(tmp_dir or tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*"):
        match = re.match(rf"{RUN_DIR_PREFIX}(\d+)-", run_dir.name)
        if match and not pid_alive(int(match.group(1))) and not (run_dir / LOG_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir.name)
    return removed


def startup_failure(log_text: str) -> str:
    """The root cause of a failed start, as one line, from Triton's log."""
    for pattern, template in (
            (r"failed to load '([^']+)' version \d+: (?:\w+: )?(.+)", "model '{0}' failed to load: {1}"),
            (r"Socket '([^']+)' already in use", "address {0} is already in use"),
            (r"failed to start (\w+) service: (.+)", "the {0} service failed to start: {1}")):
        for line in log_text.splitlines():
            match = re.search(pattern, line)
            if match:
                return template.format(*(g.strip().rstrip('";') for g in match.groups()))
    return ""


def _wait_line(log_text: str) -> str:
    """What a stopping Triton still waits for, from its countdown log lines."""
    found = re.findall(r"Timeout (\d+): Found (\d+) live models and (\d+) in-flight", log_text)
    if not found:
        return ""
    seconds, models, requests = found[-1]
    if models == "0" and requests == "0":
        return ""  # only unloading the steps is left
    return (f"{models} model(s) still finishing in-flight inferences, {requests} other request(s) in flight; "
            f"Triton gives up in {seconds} s")


@dataclass
class EmbeddedServer:
    """Start with ``start()`` (or a ``with`` block); ``stop()`` always cleans up."""

    config: ServerConfig
    log_path: Path | None = None
    shm_prefix: str = field(default_factory=lambda: f"tce{os.getpid()}_{uuid.uuid4().hex[:8]}_")
    process: subprocess.Popen | None = field(default=None, init=False)
    server_id: str = field(default_factory=lambda: f"tce-{uuid.uuid4().hex[:12]}", init=False)
    admin_key: str = field(default="", init=False)
    run_dir: Path | None = field(default=None, init=False)
    _own_log: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.admin_key = self.config.admin_key or generate_admin_key()

    def command(self, backends: Path) -> list[str]:
        c = self.config
        args = [str(triton_root() / "bin" / "tritonserver"),
                f"--id={self.server_id}",
                f"--model-repository={c.model_repository}",
                f"--backend-directory={backends}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                f"--http-address={c.host}", f"--grpc-address={c.host}", f"--metrics-address={c.host}",
                f"--http-port={c.http_port}", f"--grpc-port={c.grpc_port}", f"--metrics-port={c.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--exit-on-error=true",
                f"--log-verbose={c.log_verbose}",
                f"--model-control-mode={c.model_control_mode}",
                *restricted_api_args(self.admin_key)]
        args += [f"--load-model={name}" for name in c.load_models]
        if c.sagemaker_port is not None:
            args += ["--allow-sagemaker=true", f"--sagemaker-port={c.sagemaker_port}"]
        if c.model_config_name:
            args.append(f"--model-config-name={c.model_config_name}")
        return [*args, *c.extra_args]

    @property
    def admin_key_file(self) -> Path | None:
        return self.run_dir / ADMIN_KEY_FILE if self.run_dir else None

    def start(self) -> "EmbeddedServer":
        if self.process is not None:
            raise ServerError("server already started")
        taken = ports_in_use(self.config)
        if taken:
            raise ServerError(f"{' and '.join(taken)} on {self.config.host} already in use: stop what listens "
                              "there or choose other ports (--http-port, --grpc-port, --metrics-port)")
        if self.run_dir is None:  # a restart keeps its run directory, log and admin key file
            remove_stale_runs()
            self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
            write_admin_key(self.run_dir / ADMIN_KEY_FILE, self.admin_key)
        backends = self.run_dir / "backends"
        if not backends.is_dir():
            backends = _prepare_backends(self.run_dir)
        self._own_log = self.log_path is None or self.log_path.parent == self.run_dir
        if self._own_log:
            self.log_path = self.run_dir / LOG_FILE
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = _library_path()
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the libtorch host too (see tce_backends.model_runner)
        if self.config.sagemaker_port is not None:
            env["SAGEMAKER_TRITON_DEFAULT_MODEL_NAME"] = self.config.default_model  # what /invocations runs
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(backends), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
        try:
            self.wait_ready()
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        base = f"http://{self.config.http_url}"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(self._failure(f"tritonserver exited with code {self.process.returncode} "
                                                "during start-up"))
            try:
                with urllib.request.urlopen(f"{base}/v2", timeout=2) as response:
                    answering = json.loads(response.read()).get("name")
                if answering != self.server_id:  # another server on our port: never believe it
                    raise ServerError(f"another server ({answering!r}) answers on {self.config.http_url}")
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
                    ready = response.status == 200
                if ready and self.config.sagemaker_url is not None:  # that frontend starts after HTTP's
                    with urllib.request.urlopen(f"http://{self.config.sagemaker_url}/ping", timeout=2) as response:
                        ready = response.status == 200
                if ready:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            time.sleep(0.25)
        raise ServerError(self._failure(f"tritonserver not ready after {self.config.startup_timeout_s:.0f}s"))

    def _failure(self, what: str) -> str:
        log = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        cause = startup_failure(log)
        return f"{cause or what} (full log: {self.log_path})\nlog tail:\n{self.log_tail(lines=15)}"

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def restart(self) -> "EmbeddedServer":
        """Stop (briefly) and start again with the same ports, id, admin key and log."""
        self.stop(timeout_s=10, keep_run_dir=True)
        return self.start()

    def stop(self, timeout_s: float = 30.0, force: Callable[[], bool] = lambda: False,
             report: Callable[[str], None] | None = None, keep_log: bool = False,
             keep_run_dir: bool = False) -> bool:
        """SIGTERM, wait up to ``timeout_s`` (or until ``force()``), then SIGKILL the
        process group. Removes shared memory, and the run directory unless
        ``keep_log`` (only the log stays) or ``keep_run_dir``. Returns False when the
        server had to be killed."""
        process, self.process = self.process, None
        graceful = True
        if process is not None:
            graceful = self._terminate(process, timeout_s, force, report)
            kill_group(process.pid)
        remove_shared_memory(self.shm_prefix)
        if self.run_dir is not None and not keep_run_dir:
            self._remove_run_dir(keep_log)
        return graceful

    def _terminate(self, process: subprocess.Popen, timeout_s: float, force: Callable[[], bool],
                   report: Callable[[str], None] | None) -> bool:
        """SIGTERM and wait, saying what the stop waits for; SIGKILL the group at the end."""
        if process.poll() is not None:
            return True
        process.send_signal(signal.SIGTERM)
        deadline, next_report = time.monotonic() + timeout_s, time.monotonic() + 3
        while process.poll() is None and time.monotonic() < deadline and not force():
            time.sleep(0.1)
            if report and time.monotonic() > next_report:
                waiting = _wait_line(self.log_tail(lines=5))
                if waiting:
                    report(f"still stopping: {waiting} (Ctrl-C again to kill it now)")
                next_report = time.monotonic() + 5
        if process.poll() is not None:
            return True
        kill_group(process.pid)
        process.wait(timeout=10)
        return False

    def _remove_run_dir(self, keep_log: bool) -> None:
        assert self.run_dir is not None
        if keep_log and self._own_log:
            for item in self.run_dir.iterdir():  # keep only the log: it explains what happened
                if item.name != LOG_FILE:
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Watchdog:
    """How ``tce serve`` decides that the ensemble no longer answers."""

    interval_s: float = 5.0        # between canary inferences
    failures: int = 2              # failed canaries in a row before a restart
    max_restarts: int = 3          # within restart_window_s; then give up with exit code 3
    restart_window_s: float = 600.0
    model: str = DEFAULT_MODEL


def serve_forever(config: ServerConfig, log_path: Path | None = None, announce: Sequence[str] = (),
                  watchdog: Watchdog | None = Watchdog(), print_: Callable[[str], None] = print,
                  gateway: "Gateway | None" = None) -> int:
    """Foreground serving for ``tce serve``, optionally behind ``gateway``.

    A canary inference every few seconds (and at once when a step's stub process
    disappears) checks that the ensemble answers; when it keeps failing, Triton is
    restarted, and after too many restarts ``tce serve`` exits with code 3. The first
    Ctrl-C or SIGTERM stops Triton gracefully, saying what it waits for; a second
    kills its process group at once (exit code 130). Exit code 1: Triton died.
    """
    server = EmbeddedServer(config, log_path=log_path)
    signals = {"count": 0}

    def on_signal(*_: object) -> None:
        signals["count"] += 1

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        server.start()
        print_(f"Triton ready: HTTP {config.http_url}, gRPC {config.grpc_url}, "
               f"metrics http://{config.host}:{config.metrics_port}/metrics (log: {server.log_path})")
        print_(f"admin key (model control, shared memory, logging, trace): {server.admin_key_file} "
               f"(export TCE_ADMIN_KEY_FILE={server.admin_key_file})")
        if config.sagemaker_port is not None:
            print_(f"SageMaker protocol on port {config.sagemaker_port} of every interface (Triton binds it so): "
                   f"GET /ping, POST /invocations runs '{config.default_model}'")
        if gateway is not None:
            gateway.start()
            print_(f"gateway ready: HTTP {gateway.address}:{gateway.http_port}, gRPC {gateway.address}:"
                   f"{gateway.grpc_port} (requests checked and capped at {gateway.max_body}; Triton itself "
                   f"listens on {config.host} only)")
        for line in announce:
            print_(line)
        code = _supervise(server, watchdog, lambda: signals["count"] > 0, print_)
    finally:
        if signals["count"]:
            print_("stopping Triton: waiting for in-flight requests (Ctrl-C again to kill it now) ...")
        if gateway is not None:
            gateway.stop()
        graceful = server.stop(force=lambda: signals["count"] > 1, report=print_, keep_log=code != 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        print_(f"log kept: {server.log_path}")
        return code
    if not graceful:
        print_("Triton killed; shared memory removed.")
        return 130
    print_("Triton stopped.")
    return 0


def _supervise(server: EmbeddedServer, watchdog: Watchdog | None, stopping: Callable[[], bool],
               print_: Callable[[str], None]) -> int:
    """Watch the server until ``stopping()``: the stub processes every quarter second,
    a canary every ``watchdog.interval_s``; restart it when it breaks."""
    url = server.config.http_url
    watch = None
    if watchdog is not None and server.process is not None:
        watch = Watch(Canary(url, watchdog.model), server.process.pid, watchdog.failures)
    restarts: list[float] = []
    next_check = time.monotonic() + (watchdog.interval_s if watchdog else 0)
    while not stopping():
        time.sleep(0.25)
        if server.process is None or server.process.poll() is not None:
            print_(f"tce serve: tritonserver exited unexpectedly; log: {server.log_path}\n{server.log_tail(15)}")
            return 1
        if watch is None or watchdog is None:
            continue
        dead = watch.dead_steps()
        problem = f"the Python stub of {', '.join(dead)} died" if dead else None
        if problem is None and time.monotonic() >= next_check:
            next_check = time.monotonic() + watchdog.interval_s
            problem = watch.check()
        if not problem:
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < watchdog.restart_window_s] + [now]
        if len(restarts) > watchdog.max_restarts:
            print_(f"tce serve: error: the ensemble keeps failing ({problem}); gave up after "
                   f"{watchdog.max_restarts} restarts in {watchdog.restart_window_s:.0f} s")
            return 3
        print_(f"tce serve: the ensemble stopped answering ({problem}); restarting Triton "
               f"(restart {len(restarts)} of at most {watchdog.max_restarts})")
        server.restart()
        print_(f"Triton ready again: HTTP {server.config.http_url}")
        if server.process is not None:
            watch.reset(server.process.pid)
    return 0
