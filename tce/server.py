"""Run the Triton server that ships inside the nvidia-pytriton wheel.

The wheel holds ``tritonserver``, the Python backend and one backend stub per
Python version. ``EmbeddedServer`` lays out a backend directory with the stub for
the running interpreter, sets the library path, gives the server its own shared
memory prefix and ports, waits until it is ready, and on ``stop`` terminates it by
PID and removes any shared-memory regions it left behind.
"""
from __future__ import annotations

import os
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
from typing import Sequence


# The Triton inside nvidia-pytriton 0.7.0, and the NGC image of the same release (docker/Dockerfile).
TRITON_VERSION = "2.51.0"
NGC_RELEASE = "24.10"


class ServerError(RuntimeError):
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
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        repository = Path(self.model_repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} does not exist; build it first (make build)")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise ServerError(f"ports must be three distinct values in 1..65535, got {ports}")
        if self.model_control_mode not in ("none", "explicit"):
            raise ServerError(f"model_control_mode must be 'none' or 'explicit', got {self.model_control_mode!r}")
        object.__setattr__(self, "model_repository", repository.resolve())

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def free_ports(count: int = 3) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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


@dataclass
class EmbeddedServer:
    """Start with ``start()`` (or a ``with`` block); ``stop()`` always cleans up."""

    config: ServerConfig
    log_path: Path | None = None
    shm_prefix: str = field(default_factory=lambda: f"tce{os.getpid()}_{uuid.uuid4().hex[:8]}_")
    process: subprocess.Popen | None = field(default=None, init=False)
    _run_dir: Path | None = field(default=None, init=False)

    def command(self, backends: Path) -> list[str]:
        c = self.config
        args = [str(triton_root() / "bin" / "tritonserver"),
                f"--model-repository={c.model_repository}",
                f"--backend-directory={backends}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                f"--http-address={c.host}", f"--grpc-address={c.host}", f"--metrics-address={c.host}",
                f"--http-port={c.http_port}", f"--grpc-port={c.grpc_port}", f"--metrics-port={c.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false", "--exit-on-error=true",
                f"--log-verbose={c.log_verbose}",
                f"--model-control-mode={c.model_control_mode}"]
        args += [f"--load-model={name}" for name in c.load_models]
        if c.model_config_name:
            args.append(f"--model-config-name={c.model_config_name}")
        return [*args, *c.extra_args]

    def start(self) -> "EmbeddedServer":
        if self.process is not None:
            raise ServerError("server already started")
        self._run_dir = Path(tempfile.mkdtemp(prefix="tce-triton-"))
        backends = _prepare_backends(self._run_dir)
        if self.log_path is None:
            self.log_path = self._run_dir / "tritonserver.log"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = _library_path()
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(backends), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"http://{self.config.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} during start-up; "
                                  f"log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise ServerError(f"tritonserver not ready after {self.config.startup_timeout_s:.0f}s; "
                          f"log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the server and its backend stubs
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        if process is not None:
            _kill_group(process.pid)
        remove_shared_memory(self.shm_prefix)
        if self._run_dir is not None:
            log_inside = self.log_path is not None and self._run_dir in self.log_path.parents
            if not log_inside:
                shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """Kill what is left of the server's process group (backend stubs) and wait until it is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def remove_shared_memory(prefix: str, shm_dir: Path = Path("/dev/shm")) -> list[str]:
    removed = []
    if shm_dir.is_dir():
        for region in shm_dir.glob(f"{prefix}*"):
            try:
                region.unlink()
                removed.append(region.name)
            except OSError:
                pass
    return removed


def serve_forever(config: ServerConfig, log_path: Path | None = None, announce: Sequence[str] = ()) -> int:
    """Foreground serving for ``tce serve``: Ctrl-C (or SIGTERM) stops cleanly."""
    server = EmbeddedServer(config, log_path=log_path)
    stop = {"now": False}

    def request_stop(*_: object) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
        print(f"Triton ready: HTTP {config.http_url}, gRPC {config.grpc_url}, "
              f"metrics http://{config.host}:{config.metrics_port}/metrics (log: {server.log_path})", flush=True)
        for line in announce:
            print(line, flush=True)
        while not stop["now"]:
            if server.process is None or server.process.poll() is not None:
                print(f"tritonserver exited; log tail:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    print("Triton stopped.")
    return 0
