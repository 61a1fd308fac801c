"""Child processes that never outlive the process that started them."""
from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Callable

from tce_backends.canary import process_alive as pid_alive  # noqa: F401 - one definition, stdlib only

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when its launcher dies,
    even by SIGKILL (Linux). The signal is tied to the launching thread, so start
    children from a thread that outlives them."""
    def set_parent_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), sig)
    return set_parent_death_signal


def kill_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGKILL a process group and wait until it is gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
