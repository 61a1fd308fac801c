"""Server addresses as people type them: ``localhost:8000``, ``http://localhost:8000/``,
``grpc://host:8001`` or a bare host. tritonclient wants ``host:port`` only."""
from __future__ import annotations

from urllib.parse import urlsplit

from tce_backends.errors import UsageError

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
_SCHEMES = {"http": "http", "grpc": "grpc"}


def host_port(url: str, protocol: str) -> str:
    """``url`` -> ``host:port`` for ``protocol`` ("http" or "grpc"), or ValueError
    saying what is wrong with it."""
    if protocol not in DEFAULT_PORTS:
        raise UsageError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
    text = url.strip()
    if not text:
        raise UsageError("the server URL is empty")
    parts = urlsplit(text if "://" in text else f"{protocol}://{text}")
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise UsageError(f"{url}: TLS is not supported here; reach the server over plain HTTP or gRPC "
                         "(or through a TLS-terminating proxy)")
    if scheme not in _SCHEMES:
        raise UsageError(f"{url}: unknown scheme {scheme!r}; use host:port, http://host:port or grpc://host:port")
    if _SCHEMES[scheme] != protocol:
        raise UsageError(f"{url} is a {scheme} address but the protocol is {protocol}; use --protocol {scheme}")
    if parts.path not in ("", "/") or parts.query:
        raise UsageError(f"{url}: give only host:port, without a path")
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise UsageError(f"{url}: the port is not a number in 1..65535") from None
    if not parts.hostname:
        raise UsageError(f"{url}: no host name")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"
