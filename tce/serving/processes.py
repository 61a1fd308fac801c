"""Child processes that never outlive the process that started them."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tce_backends.canary import process_alive as pid_alive  # noqa: F401 - one definition, stdlib only
from tce_gateway.processes import die_with_parent  # noqa: F401 - one definition, shared with the gateway


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL a process group and wait until nothing of it runs. Zombies left for a
    parent that never reaps them (a container's init, say) do not count: they hold no
    memory or ports."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _running_in_group(pgid):
            return
        time.sleep(0.05)


def _running_in_group(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
