"""Why the door refused a request: an HTTP status, the gRPC code that means the same,
and one line naming the field at fault."""
from __future__ import annotations

PREFIX = "refused by the gateway: "
# HTTP status -> gRPC status code name (grpc.StatusCode member)
GRPC_CODES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
              406: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 502: "UNAVAILABLE",
              503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class GatewayError(Exception):
    """The gateway could not start (nginx missing, a port taken, a part that exits)."""


class Refusal(Exception):
    """A request the door will not forward (or could not), with the caller's answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        if status not in GRPC_CODES:
            raise ValueError(f"no gRPC code for HTTP status {status}")
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def text(self) -> str:
        return PREFIX + self.message

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES[self.status]
