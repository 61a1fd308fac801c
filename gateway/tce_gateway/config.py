"""The door's settings as frozen dataclasses, checked when they are made."""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

DEFAULT_MODEL = "calibrated_ensemble"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_host_port(value: str, what: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{what} must be host:port, got {value!r}")
    return value


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


@dataclass(frozen=True)
class Limits:
    """Work a single request may ask for."""

    max_body_bytes: int = 16 << 20   # request body after decompression, every protocol
    # Elements of all inputs of one request together (and JSON arrays and objects in it): the
    # door's own work per request, bounded before it is done.
    max_elements: int = 1 << 18
    max_id_chars: int = 256          # the request "id" Triton echoes back
    timeout_s: float = 120.0         # longest time a request may wait for Triton

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_elements", "max_id_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class Replica:
    """One Triton server behind the door, reached on loopback (or a private network)."""

    http: str
    grpc: str

    def __post_init__(self) -> None:
        check_host_port(self.http, "a replica's HTTP address")
        check_host_port(self.grpc, "a replica's gRPC address")


@dataclass(frozen=True)
class PredictionLogConfig:
    """The sampled log of answered inference requests (``tce_gateway.prediction_log``).

    Each door worker writes its own file in ``directory`` (``predictions-<worker>.jsonl``),
    rotated past ``max_file_bytes`` and keeping ``keep_files`` rotated files per worker.
    Entries wait in a queue of ``queue_entries`` for the worker's writer thread; when it is
    full an entry is dropped and counted, never waited for."""

    directory: str
    rate: float = 1.0                     # share of answered requests logged, in (0, 1]
    inputs: bool = False                  # also log each record's inputs
    max_file_bytes: int = 64 << 20
    keep_files: int = 10
    queue_entries: int = 10_000           # requests waiting for the writer
    flush_interval_s: float = 1.0         # an entry is on disk within about this

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str) or not self.directory.strip():
            raise ValueError("prediction log: directory must be a path, not empty")
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 < self.rate <= 1:
            raise ValueError(f"prediction log: rate must be in (0, 1], got {self.rate!r} (a share of requests, "
                             "e.g. 0.1; leave the log off rather than 0)")
        if self.max_file_bytes < 4096:
            raise ValueError(f"prediction log: max_file_bytes must be >= 4096, got {self.max_file_bytes}")
        if self.keep_files < 1 or self.queue_entries < 1:
            raise ValueError(f"prediction log: keep_files and queue_entries must be >= 1, got {self.keep_files} "
                             f"and {self.queue_entries}")
        if not 0 < self.flush_interval_s <= 60:
            raise ValueError(f"prediction log: flush_interval_s must be in (0, 60], got {self.flush_interval_s}")


@dataclass(frozen=True)
class DoorConfig:
    """One door worker: where it listens (for nginx only) and the Tritons it forwards to.

    ``replicas``: an inference that could not reach one (connection refused or
    dropped before an answer) is sent once more to the next, so a Triton that
    dies costs no request while another one serves."""

    replicas: tuple[Replica, ...]
    http_port: int
    grpc_port: int
    host: str = "127.0.0.1"
    default_model: str = DEFAULT_MODEL   # what SageMaker's /invocations runs
    # The key callers must send for administrative calls (checked here when set), and the
    # key Triton was started with, sent on in its place (default: the same). A per-start
    # Triton key keeps the operator's key out of every process list.
    admin_key: str | None = None
    triton_admin_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    # The model repository Triton serves, read for its releases.json (canary and shadow
    # traffic, tce_gateway.releases); None: no traffic split.
    repository: str | None = None
    prediction_log: PredictionLogConfig | None = None   # None: no prediction log

    def __post_init__(self) -> None:
        if self.repository is not None and not self.repository.strip():
            raise ValueError("repository must be a path or None, not empty")
        if not self.replicas:
            raise ValueError("the door needs at least one Triton replica")
        for port in (self.http_port, self.grpc_port):
            if not 0 < port < 65536:
                raise ValueError(f"ports must be in 1..65535, got {port}")
        for key in (self.admin_key, self.triton_admin_key):
            if key is not None and (len(key) < 16 or not _printable_ascii(key)):
                raise ValueError("admin keys must have 16 or more printable ASCII characters")
        if self.triton_admin_key is not None and self.admin_key is None:
            raise ValueError("a Triton admin key to send on needs the key callers must present (admin_key)")

    def admits(self, presented: str) -> bool:
        """Whether an administrative call carrying ``presented`` may go on to Triton (which
        checks it again, unless this door sends its own key on)."""
        if not presented or not _printable_ascii(presented):
            return False
        return self.admin_key is None or hmac.compare_digest(presented.encode(), self.admin_key.encode())

    def forwarded_key(self, presented: str) -> str:
        """The key sent to Triton for a caller who presented ``presented`` (already checked)."""
        return self.triton_admin_key or presented


@dataclass(frozen=True)
class GatewayConfig:
    """The public side, served by nginx: addresses, ports, workers and per-client limits.

    ``sagemaker_port``: also answer SageMaker's ``GET /ping`` and ``POST /invocations``
    there (the image's ``serve``); Triton's own SageMaker listener is never started."""

    address: str = "127.0.0.1"
    http_port: int | None = 8000
    grpc_port: int | None = 8001
    sagemaker_port: int | None = None
    nginx_workers: int = 0                  # 0: one per core (nginx "auto")
    door_workers: int = 2
    max_connections_per_client: int = 64    # per client address, each port
    header_timeout_s: int = 10              # whole request header
    body_timeout_s: int = 10                # between two reads of the body
    limits: Limits = field(default_factory=Limits)
    prediction_log: PredictionLogConfig | None = None   # the door workers' sampled log of answers

    def __post_init__(self) -> None:
        ports = [p for p in (self.http_port, self.grpc_port, self.sagemaker_port) if p is not None]
        if not ports:
            raise ValueError("the gateway needs at least one of http_port, grpc_port, sagemaker_port")
        if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"gateway ports must be distinct values in 1..65535, got {ports}")
        if self.nginx_workers < 0 or not 1 <= self.door_workers <= 64:
            raise ValueError("nginx_workers must be >= 0 and door_workers in 1..64")
        if self.max_connections_per_client < 1 or self.header_timeout_s < 1 or self.body_timeout_s < 1:
            raise ValueError("max_connections_per_client and the timeouts must be >= 1")
