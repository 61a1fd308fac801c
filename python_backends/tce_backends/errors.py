"""Precise exceptions: every message names the field or bundle part at fault.

``TceError`` is the root of every error the project raises on purpose (server,
SDK and tooling); ``UsageError`` marks the ones caused by what a user gave (a
file, an option, a record, a request). The CLI prints either as one line with a
non-zero exit code; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class TceError(Exception):
    """Root of the project's own errors."""


class UsageError(TceError, ValueError):
    """Bad input from the user: a file, an option, a record or a request."""


class BundleError(UsageError):
    """A bundle (or one of its parts) is missing, unreadable or inconsistent."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(f"bundle part '{part}': {problem}")
        self.part = part
        self.problem = problem


class InputError(UsageError):
    """A request carries a value the ensemble cannot use.

    Raised per request, so the Triton step fails that request alone (with Triton's
    invalid-argument code: HTTP 400, gRPC INVALID_ARGUMENT).
    """

    def __init__(self, field: str, problem: str, row: int | None = None, column: str | None = None) -> None:
        where = ", ".join(part for part in (f"column '{column}'" if column else "",
                                            f"row {row}" if row is not None else "") if part)
        super().__init__(f"input '{field}'{f' ({where})' if where else ''}: {problem}")
        self.field, self.problem, self.row, self.column = field, problem, row, column
