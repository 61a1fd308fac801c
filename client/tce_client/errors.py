"""Client-side exceptions: each says what failed and what to do."""
from __future__ import annotations

from tce_backends.errors import TceError, UsageError


class ClientError(TceError):
    """Base class of every error the SDK raises."""


class ServerUnavailableError(ClientError):
    """Nothing answers at the server URL (not started, wrong port, or crashed)."""


class ModelNotReadyError(ClientError):
    """The server is up but the ensemble (or one of its steps) is not loaded and ready."""


class RecordError(ClientError, UsageError):
    """A record cannot be encoded; names the record index and field."""

    def __init__(self, index: int | None, field: str, problem: str) -> None:
        where = f"record {index}" if index is not None else "records"
        super().__init__(f"{where}, field '{field}': {problem}")
        self.index, self.field, self.problem = index, field, problem


class InferenceError(ClientError):
    """The server rejected a request (its message names the input at fault)."""


class ServerBusyError(InferenceError):
    """The server refused the request because its queue was full or the request waited
    too long in it (HTTP 503 / gRPC UNAVAILABLE), also after the client's retries."""


class RequestTimeoutError(InferenceError):
    """No answer within the client's ``timeout_s``; the request may still have run."""
