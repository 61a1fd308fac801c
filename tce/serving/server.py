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

import dataclasses
import json
import logging
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
    from tce_gateway.config import GatewayConfig
    from tce_gateway.launcher import Gateway
from tce.serving.processes import die_with_parent, kill_group, pid_alive
from tce.serving.security import generate_admin_key, restricted_api_args, write_admin_key
from tce.serving.tracing import TraceConfig
from tce_backends.errors import TceError
from tce_client.client import DEFAULT_MODEL

# The Triton inside nvidia-pytriton 0.7.0, and the NGC image of the same release (docker/Dockerfile).
TRITON_VERSION = "2.51.0"
NGC_RELEASE = "24.10"
SHM_DIR = Path("/dev/shm")
RUN_DIR_PREFIX = "tce-triton-"
ADMIN_KEY_FILE = "admin-key"
LOG_FILE = "tritonserver.log"
log = logging.getLogger(__name__)


class ServerError(TceError):
    """The embedded server could not be started or did not become ready."""


# gRPC keeps this many request/response objects for reuse (Triton's default: 8). Loads of 32
# requests in flight (tce benchmark, tce predict's in-flight window) otherwise allocate and free
# one per request beyond the 8th.
GRPC_ALLOCATION_POOL = 64
FRONTEND_ARGS = (f"--grpc-infer-allocation-pool-size={GRPC_ALLOCATION_POOL}",)


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
    trace: TraceConfig | None = None  # Triton's request tracing (tce.serving.tracing); None: off

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
        return {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}


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
                *FRONTEND_ARGS,
                f"--model-control-mode={c.model_control_mode}",
                *restricted_api_args(self.admin_key)]
        args += [f"--load-model={name}" for name in c.load_models]
        if c.model_config_name:
            args.append(f"--model-config-name={c.model_config_name}")
        if c.trace is not None:
            args += c.trace.args()
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
                    if response.status == 200:
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

    def restart(self, grace_s: float = 10.0) -> "EmbeddedServer":
        """Stop (waiting at most ``grace_s`` for requests in flight) and start again with the
        same ports, id, admin key and log."""
        self.stop(timeout_s=grace_s, keep_run_dir=True)
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
    """How ``tce serve`` keeps Triton answering: it restarts a Triton that exited, whose
    Python step died, or whose canary keeps failing; at once the first time, then after
    growing pauses, and gives up (exit code 3) after ``max_restarts`` in the window."""

    interval_s: float = 5.0        # between canary inferences; 0: no canary (exits are still restarted)
    failures: int = 2              # failed canaries in a row before a restart
    max_restarts: int = 3          # within restart_window_s; then give up with exit code 3
    restart_window_s: float = 600.0
    backoff_s: float = 1.0         # pause before the second restart in the window, doubled for each next one
    max_backoff_s: float = 30.0
    model: str = DEFAULT_MODEL

    def pause_before(self, restart: int) -> float:
        return 0.0 if restart <= 1 else min(self.max_backoff_s, self.backoff_s * 2 ** (restart - 2))


@dataclass
class _Supervised:
    """One Triton replica and what watches it."""

    name: str
    server: EmbeddedServer
    watch: Watch | None = None
    restarts: list[float] = field(default_factory=list)
    next_check: float = 0.0

    def problem(self, watchdog: Watchdog) -> str | None:
        """Why this replica needs a restart now, if it does."""
        process = self.server.process
        if process is None or process.poll() is not None:
            code = "not running" if process is None else f"exit code {process.returncode}"
            return f"tritonserver{self.name} exited ({code})"
        if self.watch is None:
            return None
        dead = self.watch.dead_steps()
        if dead:
            return f"the ensemble stopped answering{self.name}: the Python stub of {', '.join(dead)} died"
        if watchdog.interval_s > 0 and time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + watchdog.interval_s
            failure = self.watch.check()
            if failure:
                return f"the ensemble stopped answering{self.name} ({failure})"
        return None


def replica_configs(config: ServerConfig, replicas: int) -> list[ServerConfig]:
    """``config`` for the first replica, free loopback ports for the others."""
    others = [dataclasses.replace(config, http_port=h, grpc_port=g, metrics_port=m,
                                  trace=config.trace.for_replica(i) if config.trace else None)
              for i, (h, g, m) in enumerate((free_ports(3) for _ in range(replicas - 1)), start=1)]
    return [config, *others]


def serve_forever(config: ServerConfig, log_path: Path | None = None, announce: Sequence[str] = (),
                  watchdog: Watchdog = Watchdog(),
                  gateway: "GatewayConfig | None" = None, replicas: int = 1, operator_key: str | None = None,
                  default_model: str = DEFAULT_MODEL) -> int:
    """Foreground serving for ``tce serve``: ``replicas`` Tritons, optionally behind the
    gateway (needed for more than one: it sends a request a dead replica dropped to
    another). Each replica is restarted when it exits or breaks (``Watchdog``). The first
    Ctrl-C or SIGTERM stops everything gracefully, saying what it waits for; a second kills
    at once (exit code 130). Exit code 3: restarts did not help.

    With the gateway, callers' administrative calls carry ``operator_key`` (checked by the
    door); Triton runs with a key made for this run, so the operator's key is never on a
    command line."""
    supervised = _replicas(config, replicas, gateway is not None, operator_key, log_path)
    signals = {"count": 0}

    def on_signal(*_: object) -> None:
        signals["count"] += 1

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    front = None
    code = 0
    try:
        for replica in supervised:
            replica.server.start()
            _say_ready(replica, operator_key if gateway is not None else None)
        if gateway is not None:
            front = _start_gateway(gateway, supervised, operator_key, default_model)
        for line in announce:
            log.info(line)
        code = _Supervisor(supervised, watchdog, front, lambda: signals["count"] > 0).run()
    finally:
        if signals["count"]:
            log.info("stopping Triton: waiting for in-flight requests (Ctrl-C again to kill it now) ...")
        if front is not None:
            front.stop()
        graceful = all([r.server.stop(force=lambda: signals["count"] > 1, report=log.info, keep_log=code != 0)
                        for r in supervised])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _farewell(code, graceful, supervised[0].server)


def _replicas(config: ServerConfig, count: int, gateway: bool, operator_key: str | None,
              log_path: Path | None) -> list[_Supervised]:
    if count < 1 or (count > 1 and not gateway):
        raise ServerError("more than one Triton replica needs the gateway in front (--gateway)")
    if gateway:  # one key for every replica (administrative calls go to all), never the operator's
        config = dataclasses.replace(config, admin_key=generate_admin_key() if operator_key else config.admin_key
                                     or generate_admin_key())
    return [_Supervised(f" (replica {i})" if count > 1 else "",
                        EmbeddedServer(c, log_path=log_path if i == 0 else None))
            for i, c in enumerate(replica_configs(config, count))]


def _farewell(code: int, graceful: bool, server: EmbeddedServer) -> int:
    if code:
        log.error(f"log kept: {server.log_path}")
        return code
    if not graceful:
        log.warning("Triton killed; shared memory removed.")
        return 130
    log.info("Triton stopped.")
    return 0


def _say_ready(replica: _Supervised, operator_key: str | None) -> None:
    server, config = replica.server, replica.server.config
    log.info(f"Triton ready{replica.name}: HTTP {config.http_url}, gRPC {config.grpc_url}, metrics "
           f"http://{config.host}:{config.metrics_port}/metrics (log: {server.log_path})")
    if replica.name and not replica.name.endswith("0)"):
        return
    if operator_key:
        log.info("admin key: the one you gave (the gateway checks it; Triton runs with a key made for this run, "
               f"in {server.admin_key_file})")
    else:
        log.info(f"admin key (model control, shared memory, logging, trace): {server.admin_key_file} "
               f"(export TCE_ADMIN_KEY_FILE={server.admin_key_file})")


def _start_gateway(config: "GatewayConfig", supervised: list[_Supervised], operator_key: str | None,
                   default_model: str) -> "Gateway":
    from tce_gateway.config import Replica
    from tce_gateway.errors import GatewayError
    from tce_gateway.launcher import Gateway

    triton_key = supervised[0].server.admin_key
    front = Gateway(tuple(Replica(r.server.config.http_url, r.server.config.grpc_url) for r in supervised), config,
                    default_model=default_model, admin_key=operator_key or triton_key, triton_admin_key=triton_key,
                    repository=supervised[0].server.config.model_repository)  # releases.json: canary, shadow
    try:
        front.start()
    except GatewayError as error:
        raise ServerError(f"the gateway did not start: {error}") from None
    ports = [f"{name} {config.address}:{port}" for name, port in (
        ("HTTP", config.http_port), ("gRPC", config.grpc_port), ("SageMaker", config.sagemaker_port)) if port]
    log.info(f"gateway ready: {', '.join(ports)} (every request checked and rebuilt; bodies capped at "
           f"{config.limits.max_body_bytes} bytes; Triton listens on {supervised[0].server.config.host} only)")
    if config.sagemaker_port is not None:
        log.info(f"SageMaker protocol on {config.address}:{config.sagemaker_port}: GET /ping, POST /invocations "
               f"runs '{default_model}' (Triton's own SageMaker listener is not started)")
    return front


class _Supervisor:
    """Watches the replicas (stub processes every quarter second, a canary every
    ``watchdog.interval_s``) and the gateway's processes until told to stop."""

    def __init__(self, supervised: list[_Supervised], watchdog: Watchdog, front: "Gateway | None",
                 stopping: Callable[[], bool]) -> None:
        self.supervised, self.watchdog, self.front = supervised, watchdog, front
        self.stopping = stopping
        for replica in supervised:
            replica.watch = self._watch(replica.server)
            replica.next_check = time.monotonic() + watchdog.interval_s

    def _watch(self, server: EmbeddedServer) -> Watch | None:
        if server.process is None:
            return None
        return Watch(Canary(server.config.http_url, self.watchdog.model), server.process.pid, self.watchdog.failures)

    def run(self) -> int:
        while not self.stopping():
            time.sleep(0.25)
            if self.front is not None:
                for part in self.front.check():
                    log.warning(f"tce serve: the gateway's {part} stopped; started it again")
                for line in self.front.door_lines():  # shadow and canary counts, releases.json problems
                    log.info(line)
            for replica in self.supervised:
                problem = replica.problem(self.watchdog)
                if problem and not self.stopping():
                    code = self._restart(replica, problem)
                    if code:
                        return code
        return 0

    def _restart(self, replica: _Supervised, problem: str) -> int:
        watchdog, now = self.watchdog, time.monotonic()
        replica.restarts = [t for t in replica.restarts if now - t < watchdog.restart_window_s] + [now]
        count = len(replica.restarts)
        if count > watchdog.max_restarts:
            log.error(f"tce serve: error: {problem}; gave up after {watchdog.max_restarts} restarts in "
                        f"{watchdog.restart_window_s:.0f} s (log: {replica.server.log_path})")
            return 3
        pause = watchdog.pause_before(count)
        log.warning(f"tce serve: {problem}; restarting Triton{replica.name} (restart {count} of at most "
                    f"{watchdog.max_restarts}{f', after {pause:.0f} s' if pause else ''})")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not self.stopping():
            time.sleep(0.1)
        if self.stopping():
            return 0
        started = time.monotonic()
        try:  # a broken server's requests in flight fail anyway: waiting for them only widens the gap
            replica.server.restart(grace_s=1.0)
        except ServerError as error:
            log.error(f"tce serve: Triton{replica.name} did not come back: {str(error).splitlines()[0]}")
            return 0  # not running: the next round restarts it again, within the budget
        log.info(f"Triton ready again{replica.name}: HTTP {replica.server.config.http_url} "
                    f"({time.monotonic() - started:.1f} s to restart)")
        replica.watch = self._watch(replica.server)
        replica.next_check = time.monotonic() + watchdog.interval_s
        return 0
