"""The nginx gateway that fronts Triton when it is reachable beyond this machine.

Triton 2.51's HTTP frontend can be crashed by a single request (a huge declared
shape, deep JSON nesting), and it has no request-size limit. The gateway
(``docker/gateway/``: nginx plus an njs guard) refuses such requests, caps body
sizes for HTTP and gRPC, serves only inference and read-only discovery, and passes
administrative calls on only with the admin key header. Compose runs it as the
``gateway`` service; ``tce serve --gateway`` runs the same configuration here.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tce.serving.processes import die_with_parent
from tce_backends.errors import TceError

GATEWAY_DIR = Path(__file__).resolve().parents[2] / "docker" / "gateway"
TEMPLATE = GATEWAY_DIR / "gateway.conf.template"
MODULE_ENV = "TCE_NGINX_NJS_MODULE"
MODULE_CANDIDATES = (Path("/usr/lib/nginx/modules/ngx_http_js_module.so"),
                     Path("/usr/lib64/nginx/modules/ngx_http_js_module.so"),
                     Path("/etc/nginx/modules/ngx_http_js_module.so"),
                     Path("/usr/local/nginx/modules/ngx_http_js_module.so"))
DEFAULT_MAX_BODY = "16m"
DEFAULT_MAX_ELEMENTS = 1 << 22


class GatewayError(TceError):
    """nginx (with njs) is missing, or the gateway did not start."""


def find_nginx() -> tuple[str, Path]:
    """The nginx binary and its njs module, or GatewayError saying how to get them."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                            if os.access(p, os.X_OK)), None)
    override = os.environ.get(MODULE_ENV)
    module = Path(override) if override else next((p for p in MODULE_CANDIDATES if p.is_file()), None)
    if binary is None or module is None or not module.is_file():
        raise GatewayError("the gateway needs nginx with the njs module (Debian/Ubuntu: apt-get install nginx-light "
                           f"libnginx-mod-http-js; elsewhere set ${MODULE_ENV} to ngx_http_js_module.so), "
                           "or run it with docker compose")
    return binary, module


class _Placeholders(string.Template):
    """Only ``${UPPER_CASE}`` is a placeholder: nginx's own ``$variables`` stay as they are,
    as with the nginx image's envsubst of defined variables."""

    pattern = r"\$(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[A-Z][A-Z0-9_]*)\}|(?P<invalid>(?!)))"


def render(values: dict[str, str]) -> str:
    """The gateway's server blocks with ``values`` substituted."""
    try:
        return _Placeholders(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
    except KeyError as missing:
        raise GatewayError(f"gateway template value {missing} is not set") from None


@dataclass
class Gateway:
    """nginx on ``address:http_port``/``grpc_port`` in front of Triton's HTTP and gRPC."""

    triton_http: str
    triton_grpc: str
    address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_body: str = DEFAULT_MAX_BODY
    max_elements: int = DEFAULT_MAX_ELEMENTS
    process: subprocess.Popen | None = field(default=None, init=False)
    run_dir: Path | None = field(default=None, init=False)

    def config(self, module: Path, run_dir: Path) -> str:
        server_blocks = render({
            "TRITON_HTTP": self.triton_http, "TRITON_GRPC": self.triton_grpc, "GATEWAY_ADDRESS": self.address,
            "GATEWAY_HTTP_PORT": str(self.http_port), "GATEWAY_GRPC_PORT": str(self.grpc_port),
            "TCE_MAX_BODY": self.max_body, "TCE_MAX_ELEMENTS": str(self.max_elements)})
        (run_dir / "gateway.conf").write_text(server_blocks, encoding="utf-8")
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        return (f"load_module {module};\n{user}daemon off;\nworker_processes 1;\npid {run_dir}/nginx.pid;\n"
                f"error_log {run_dir}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
                f"http {{\n  access_log off;\n  server_tokens off;\n  js_path \"{GATEWAY_DIR}/\";\n"
                f"  client_body_temp_path {run_dir}/body;\n  proxy_temp_path {run_dir}/proxy;\n"
                f"  include {run_dir}/gateway.conf;\n}}\n")

    def start(self, timeout_s: float = 15.0) -> "Gateway":
        binary, module = find_nginx()
        self.run_dir = Path(tempfile.mkdtemp(prefix="tce-gateway-"))
        os.chmod(self.run_dir, 0o755)
        for temp in ("body", "proxy"):
            (self.run_dir / temp).mkdir(mode=0o777)
            os.chmod(self.run_dir / temp, 0o777)  # nginx workers run as nobody when started by root
        conf = self.run_dir / "nginx.conf"
        conf.write_text(self.config(module, self.run_dir), encoding="utf-8")
        check = subprocess.run([binary, "-t", "-q", "-p", str(self.run_dir), "-c", str(conf)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            self.stop()
            raise GatewayError(f"nginx refused the gateway configuration: {check.stderr.strip()}")
        self.process = subprocess.Popen([binary, "-p", str(self.run_dir), "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                        preexec_fn=die_with_parent(os.getpid(), signal.SIGQUIT))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.stop()
                raise GatewayError(f"nginx exited at start: {error.strip() or self.error_log()}")
            if all(_listening(self.address, port) for port in (self.http_port, self.grpc_port)):
                return self
            time.sleep(0.1)
        self.stop()
        raise GatewayError(f"the gateway did not listen on {self.address}:{self.http_port} within {timeout_s:.0f} s")

    def error_log(self) -> str:
        path = self.run_dir / "error.log" if self.run_dir else None
        return path.read_text(encoding="utf-8", errors="replace")[-2000:] if path and path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests in flight
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address if address not in ("0.0.0.0", "::") else "127.0.0.1", port),
                                      timeout=0.5):
            return True
    except OSError:
        return False
