"""Precise exceptions: every message names the field or bundle part at fault."""
from __future__ import annotations


class BundleError(ValueError):
    """A bundle (or one of its parts) is missing, unreadable or inconsistent."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(f"bundle part '{part}': {problem}")
        self.part = part
        self.problem = problem


class InputError(ValueError):
    """A request carries a value the ensemble cannot use.

    Raised per request, so the Triton step fails that request alone.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"input '{field}': {problem}")
        self.field = field
        self.problem = problem
