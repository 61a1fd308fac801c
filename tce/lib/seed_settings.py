"""The seed jobs' environment variables (seed 001 ``ID_FIELD``, ``BATCH_SIZE``, ``DEVICE`` ...;
seed 002 ``LABEL_FIELD``), read as defaults for the batch commands' flags: a job
configured the seeds' way runs unchanged, and a flag given on the command line wins.

The settings that choose hardware or loader processes (``DEVICE``, ``ACCELERATOR``,
``NUM_WORKERS``) belong to the server, which runs the model where it is deployed
(its GPU when it has one): they are acknowledged with one note, never silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, TypeVar

from tce_backends.errors import UsageError

T = TypeVar("T")
SERVER_DECIDES = ("DEVICE", "ACCELERATOR", "NUM_WORKERS")
# seed 001's --job_type choices: all three run the same pure inference
SEED_JOB_TYPES = ("inference", "validation", "testing")


@dataclass(frozen=True)
class SeedSettings:
    id_field: str | None = None      # ID_FIELD
    label_field: str | None = None   # LABEL_FIELD (seed 002)
    batch_size: int | None = None    # BATCH_SIZE
    server_decides: tuple[tuple[str, str], ...] = ()  # (variable, value) of each one set

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "SeedSettings":
        """The seed variables that are set (an empty value counts as not set)."""
        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        batch = get("BATCH_SIZE")
        if batch is not None and not (batch.isdigit() and int(batch) >= 1):
            raise UsageError(f"BATCH_SIZE (environment) must be a whole number >= 1, got {batch!r}")
        return cls(id_field=get("ID_FIELD"), label_field=get("LABEL_FIELD"),
                   batch_size=int(batch) if batch is not None else None,
                   server_decides=tuple((name, value) for name in SERVER_DECIDES if (value := get(name)) is not None))

    def note(self) -> str | None:
        """One line for the settings the server decides, if any is set."""
        if not self.server_decides:
            return None
        settings = ", ".join(f"{name}={value}" for name, value in self.server_decides)
        return (f"note: {settings}: the server decides where and how the model runs (its GPU when it has one, its "
                "own instances), so these seed settings change nothing in this job")


def check_job_type(job_type: str | None) -> None:
    """Seed 001's ``--job_type``: its three choices are accepted (all are pure inference)."""
    if job_type is not None and job_type not in SEED_JOB_TYPES:
        raise UsageError(f"--job_type {job_type!r} is not a job this command runs; seed 001's job types are "
                         f"{', '.join(SEED_JOB_TYPES)} (all score the records the same way)")


def choose(flag: T | None, environment: T | None) -> T | None:
    """A flag given on the command line wins over the seed's environment variable."""
    return flag if flag is not None else environment
