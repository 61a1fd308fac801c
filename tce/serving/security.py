"""The admin key that guards Triton's administrative endpoints.

Every server this project starts (``tce serve``, the compose image) runs with
``--http-restricted-api`` and ``--grpc-restricted-protocol`` on the endpoints that
change or expose the server: loading and unloading models (which can run arbitrary
code), shared-memory registration, logging and trace settings. Inference, health,
metadata, config and statistics stay open. A caller of a restricted endpoint must
send the key in a header; see ``docs/security.md``.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from tce_backends.errors import UsageError

RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_KEY_HEADER = "tce-admin-key"
# Triton's gRPC frontend prefixes the restricted-protocol header key.
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
ADMIN_KEY_ENV = "TCE_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "TCE_ADMIN_KEY_FILE"
_MIN_KEY_LENGTH = 16


class AdminKeyError(UsageError):
    """The admin key is missing, unreadable or too weak."""


def generate_admin_key() -> str:
    return secrets.token_urlsafe(32)


def read_admin_key(path: Path | str | None = None, required: bool = False) -> str | None:
    """The key from ``path``, else ``$TCE_ADMIN_KEY_FILE``, else ``$TCE_ADMIN_KEY``."""
    path = path or os.environ.get(ADMIN_KEY_FILE_ENV)
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise AdminKeyError(f"cannot read the admin key file {path}: {error.strerror}") from None
        source = f"admin key file {path}"
    else:
        key = os.environ.get(ADMIN_KEY_ENV, "").strip()
        source = f"${ADMIN_KEY_ENV}"
    if not key:
        if required:
            raise AdminKeyError(f"this needs the server's admin key: set ${ADMIN_KEY_ENV} or "
                                f"${ADMIN_KEY_FILE_ENV}, or pass --admin-key-file")
        return None
    if len(key) < _MIN_KEY_LENGTH or any(c.isspace() or c in ",:=" for c in key):
        raise AdminKeyError(f"the {source} must be at least {_MIN_KEY_LENGTH} characters without spaces, "
                            "',', ':' or '='")
    return key


def write_admin_key(path: Path, key: str) -> Path:
    """Write ``key`` readable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return path


def restricted_api_args(key: str) -> list[str]:
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={key}"]


def http_headers(key: str | None) -> dict[str, str]:
    return {ADMIN_KEY_HEADER: key} if key else {}


def grpc_headers(key: str | None) -> dict[str, str]:
    return {GRPC_ADMIN_KEY_HEADER: key} if key else {}
