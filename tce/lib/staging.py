"""Whole or nothing: directories written aside and swapped into place, one writer at a time.

``staged_directory(target)`` hands out a sibling ``.<name>.staging-<pid>-<token>``
(empty, or a copy of ``target``). When the block ends normally its files are flushed to
disk and it takes ``target``'s place in one step (Linux ``renameat2(RENAME_EXCHANGE)``;
elsewhere two renames: ``target`` -> ``.<name>.previous-<pid>-<token>``, staging ->
``target``), and the old tree is removed. When the block raises, the staging directory
is removed and ``target`` is byte for byte what it was. A process killed half way
leaves only hidden siblings behind; the next ``staged_directory`` of the same target
removes those of dead processes (and, had the kill fallen between the two renames,
first puts the old tree back).

``repository_lock(directory)`` makes writers of one directory take turns: an exclusive
``flock`` on the sibling ``.<name>.lock``, which names its holder while it is held and is
removed after (a holder that dies lets go of the lock with it: the kernel releases it),
with a wait limit that ends in one line naming the holder.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from tce_backends.errors import UsageError

STAGING = "staging"
PREVIOUS = "previous"
LOCK_TIMEOUT_S = 60.0
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class LockTimeout(UsageError):
    """Another process holds the directory's lock for longer than the wait limit."""


def sibling(target: Path, kind: str, token: str) -> Path:
    """``.<name>.<kind>-<token>`` next to ``target``; ``token`` is ``<pid>-<random>``."""
    return target.parent / f".{target.name}.{kind}-{token}"


def new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _leftovers(target: Path) -> Iterator[tuple[str, str, Path]]:
    """(kind, token, path) of every staging or previous sibling of ``target`` whose process is gone."""
    if not target.parent.is_dir():
        return
    for path in target.parent.iterdir():
        for kind in (STAGING, PREVIOUS):
            prefix = f".{target.name}.{kind}-"
            if not path.name.startswith(prefix):
                continue
            token = path.name[len(prefix):]
            pid = token.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                yield kind, token, path


def clean_stale(target: Path | str) -> list[Path]:
    """Remove what killed writers of ``target`` left; returns what was removed or put back.

    A kill between the two renames of a swap leaves ``target`` absent with its old tree
    at ``previous`` and the new one at ``staging`` (same token): the old one goes back,
    as the writer never finished."""
    target = Path(target)
    found = list(_leftovers(target))
    tokens = {token for kind, token, _ in found if kind == STAGING}
    handled = []
    for kind, token, path in found:
        if kind == PREVIOUS and token in tokens and not os.path.lexists(target):
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)
        handled.append(path)
    return handled


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (and ``root``) to disk."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                _fsync(path)
        _fsync(directory)


def _fsync(path: str | Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or libc, or the file system says no
        return False
    raise OSError(code, os.strerror(code), str(second))


def swap_into_place(staging: Path, target: Path, token: str) -> None:
    """``staging`` becomes ``target``; the old ``target`` is removed."""
    previous = sibling(target, PREVIOUS, token)
    if not os.path.lexists(target):
        os.rename(staging, target)
    elif _exchange(staging, target):
        os.rename(staging, previous)  # the old tree, under the name a later run recognises
    else:
        os.rename(target, previous)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(previous, target)
            raise
    _fsync(target.parent)
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def staged_directory(target: Path | str, copy_existing: bool = False) -> Iterator[Path]:
    """A directory to write ``target``'s new content into (see the module's docstring).

    ``copy_existing``: it starts as a copy of ``target`` (when there is one), so what the
    block leaves alone survives the swap."""
    target = Path(target).resolve()  # a link to the directory: the directory it names is replaced
    clean_stale(target)
    token = new_token()
    staging = sibling(target, STAGING, token)
    try:
        if copy_existing and target.is_dir():
            shutil.copytree(target, staging, symlinks=True)
        else:
            staging.mkdir(parents=True)
        yield staging
        fsync_tree(staging)
        swap_into_place(staging, target, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def tree_digest(root: Path | str) -> str:
    """SHA-256 over every path, kind and file content under ``root``: equal digests, equal trees."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} -> {os.readlink(path)}\n".encode())
        elif path.is_dir():
            digest.update(f"D {relative}\n".encode())
        else:
            digest.update(f"F {relative} {path.stat().st_size}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def lock_path(directory: Path | str) -> Path:
    """The lock file of ``directory``: a sibling, so it outlives swaps of the directory."""
    directory = Path(directory).resolve()
    return directory.parent / f".{directory.name}.lock"


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        who = json.loads(handle.read() or "{}")
    except ValueError:
        who = {}
    if not who:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(who.get("since", 0)))
    return f"{who.get('command', 'a process')} (pid {who.get('pid')} on {who.get('host')}, since {since})"


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (a holder removes it when done)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _acquire(path: Path, directory: Path, timeout_s: float) -> IO[str]:
    """The locked, still current lock file at ``path``; LockTimeout after ``timeout_s``."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{directory} is locked by {holder} ({path}); waited {timeout_s:g} s: run this "
                                  "again when it has finished") from None
            time.sleep(0.1)
            continue
        if _same_file(handle, path):
            return handle
        handle.close()  # locked a file its holder had just removed: take the new one


@contextmanager
def repository_lock(directory: Path | str, timeout_s: float = LOCK_TIMEOUT_S, command: str = "tce") -> Iterator[Path]:
    """Hold ``directory``'s exclusive lock for the block; waits up to ``timeout_s`` seconds.

    The lock file exists while the lock is held (it names the holder) and is removed after."""
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(path, Path(directory), timeout_s)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}))
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter that locks it sees it is gone
        handle.close()  # releases the lock
