"""Child processes that never outlive the process that started them (Linux)."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
from typing import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the kernel sends ``sig`` to the child when its launcher dies,
    even by SIGKILL. The signal is tied to the launching thread, so start children
    from a thread that outlives them."""
    def set_parent_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), sig)
    return set_parent_death_signal


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nothing listens on now (the kernel's choice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(address: str, port: int, timeout_s: float = 0.5) -> bool:
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
