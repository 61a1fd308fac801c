"""tce.lib.staging: a staged directory write leaves its target whole, old or new, whatever
fails or is killed, and a repository has one writer at a time."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tce.lib import staging
from tce.lib.staging import (
    LockTimeout,
    clean_stale,
    lock_path,
    repository_lock,
    staged_directory,
    tree_digest,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    """A small tree: nested directories, a binary file, an empty file, a link."""
    root = tmp_path / "repository"
    (root / "model" / "1").mkdir(parents=True)
    (root / "model" / "config.pbtxt").write_text("name: 'model'\n")
    (root / "model" / "1" / "model.pt").write_bytes(os.urandom(4096))
    (root / "model" / "1" / "empty").write_bytes(b"")
    (root / "other_team").mkdir()
    (root / "other_team" / "notes.txt").write_text("theirs\n")
    (root / "latest").symlink_to("model/1")
    return root


def siblings(path: Path) -> list[str]:
    """Everything next to ``path`` except ``path`` itself."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def write_new(directory: Path) -> None:
    shutil.rmtree(directory / "model" / "1")
    (directory / "model" / "2").mkdir(parents=True)
    (directory / "model" / "2" / "model.pt").write_bytes(b"new model")


def test_tree_digest_sees_content_names_and_links(target: Path) -> None:
    before = tree_digest(target)
    assert tree_digest(target) == before
    (target / "model" / "1" / "empty").write_bytes(b"x")
    assert tree_digest(target) != before
    (target / "model" / "1" / "empty").write_bytes(b"")
    assert tree_digest(target) == before
    (target / "latest").unlink()
    (target / "latest").symlink_to("model")
    assert tree_digest(target) != before


def test_a_finished_write_replaces_the_target_whole(target: Path) -> None:
    with staged_directory(target, copy_existing=True) as aside:
        assert aside.parent == target.parent and aside.name.startswith(".repository.staging-")
        assert (aside / "other_team" / "notes.txt").read_text() == "theirs\n"  # a copy to start from
        write_new(aside)
        assert (target / "model" / "1" / "model.pt").is_file()  # nothing visible yet
    assert (target / "model" / "2" / "model.pt").read_bytes() == b"new model"
    assert not (target / "model" / "1").exists()
    assert (target / "other_team" / "notes.txt").read_text() == "theirs\n"
    assert os.readlink(target / "latest") == "model/1"
    assert siblings(target) == []  # no staging, no previous tree left


def test_without_copy_the_target_is_what_the_block_wrote(target: Path) -> None:
    with staged_directory(target) as aside:
        assert list(aside.iterdir()) == []
        (aside / "only").write_text("this")
    assert sorted(p.name for p in target.iterdir()) == ["only"]


def test_a_new_target_appears_whole(tmp_path: Path) -> None:
    new = tmp_path / "deeper" / "calibration"
    with staged_directory(new) as aside:
        (aside / "calibration.json").write_text("{}")
        assert not new.exists()
    assert (new / "calibration.json").read_text() == "{}"
    assert siblings(new) == []


def test_a_link_to_the_target_keeps_pointing_at_the_new_tree(target: Path, tmp_path: Path) -> None:
    link = tmp_path / "served"
    link.symlink_to(target)
    with staged_directory(link, copy_existing=True) as aside:
        write_new(aside)
    assert link.is_symlink() and (link / "model" / "2" / "model.pt").is_file()
    assert siblings(target) == ["served"]


def _fail_in_block(aside: Path) -> None:
    write_new(aside)
    raise RuntimeError("injected: the writer fails half way")


def _partial_copy(source: Path, destination: Path, symlinks: bool = False) -> None:
    (Path(destination) / "model").mkdir(parents=True)
    shutil.copyfile(Path(source) / "model" / "config.pbtxt", Path(destination) / "model" / "config.pbtxt")
    raise OSError(28, "No space left on device")


def _no_exchange_and_no_second_rename(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "_exchange", lambda first, second: False)
    real, calls = os.rename, []

    def rename(source: object, destination: object) -> None:
        calls.append(source)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(source, destination)

    monkeypatch.setattr(staging.os, "rename", rename)


FAILURES = {
    "copy": lambda mp: mp.setattr(staging.shutil, "copytree", _partial_copy),
    "write": None,  # the block itself raises
    "fsync": lambda mp: mp.setattr(staging, "fsync_tree", lambda root: (_ for _ in ()).throw(OSError(5, "EIO"))),
    "exchange": lambda mp: mp.setattr(staging, "_exchange",
                                      lambda first, second: (_ for _ in ()).throw(OSError(16, "Device busy"))),
    "second rename": _no_exchange_and_no_second_rename,
}


@pytest.mark.parametrize("point", list(FAILURES))
def test_a_failure_at_any_point_leaves_the_target_byte_for_byte(target: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 point: str) -> None:
    before = tree_digest(target)
    inject = FAILURES[point]
    if inject is not None:
        inject(monkeypatch)
    with pytest.raises((OSError, RuntimeError)):
        with staged_directory(target, copy_existing=True) as aside:
            if inject is None:
                _fail_in_block(aside)
            else:
                write_new(aside)
    monkeypatch.undo()
    assert tree_digest(target) == before
    assert siblings(target) == []


def test_the_two_rename_swap_when_exchange_is_not_available(target: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "_exchange", lambda first, second: False)
    with staged_directory(target, copy_existing=True) as aside:
        write_new(aside)
    assert (target / "model" / "2" / "model.pt").read_bytes() == b"new model"
    assert siblings(target) == []


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "which").write_text("a")
    (tmp_path / "b" / "which").write_text("b")
    if not staging._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (tmp_path / "a" / "which").read_text() == "b" and (tmp_path / "b" / "which").read_text() == "a"


# -- killed writers ---------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    from tce.lib import staging

    target, marker, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def stop_here():
        marker.write_text("here")
        time.sleep(600)

    if point == "between renames":
        staging._exchange = lambda first, second: False
        real = os.rename
        def rename(source, destination):
            real(source, destination)
            if ".previous-" in str(destination):
                stop_here()
        staging.os.rename = rename
    with staging.staged_directory(target, copy_existing=True) as aside:
        shutil.rmtree(aside / "model" / "1")
        (aside / "model" / "2").mkdir()
        (aside / "model" / "2" / "model.pt").write_bytes(b"new model")
        if point == "writing":
            stop_here()
        if point == "removing the old tree":  # after the swap
            staging.shutil.rmtree = lambda *args, **kwargs: stop_here()
""")


def kill_writer(target: Path, point: str, tmp_path: Path) -> None:
    """Run a staged write of ``target`` in a subprocess and SIGKILL it at ``point``."""
    marker = tmp_path / f"marker-{point.replace(' ', '-')}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(marker), point], env=env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the writer never reached the point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.stderr is not None
    process.stderr.close()


def test_a_writer_killed_while_writing_leaves_the_target_and_its_leftovers_go_next_time(
        target: Path, tmp_path: Path) -> None:
    before = tree_digest(target)
    kill_writer(target, "writing", tmp_path)
    assert tree_digest(target) == before
    assert [name.split("-")[0] for name in siblings(target) if name.startswith(".repository.")] == \
        [".repository.staging"]
    with staged_directory(target, copy_existing=True) as aside:
        (aside / "next").write_text("run")
    assert not any(name.startswith(".repository.") for name in siblings(target))
    assert (target / "next").read_text() == "run" and (target / "model" / "1" / "model.pt").is_file()


def test_a_writer_killed_between_the_two_renames_gets_the_old_tree_back(target: Path, tmp_path: Path) -> None:
    before = tree_digest(target)
    kill_writer(target, "between renames", tmp_path)
    assert not target.exists()  # the one window of the fallback swap
    restored = clean_stale(target)
    assert len(restored) == 2
    assert tree_digest(target) == before
    assert not any(name.startswith(".repository.") for name in siblings(target))


def test_a_writer_killed_after_the_swap_leaves_the_new_tree(target: Path, tmp_path: Path) -> None:
    kill_writer(target, "removing the old tree", tmp_path)
    assert (target / "model" / "2" / "model.pt").read_bytes() == b"new model"
    assert clean_stale(target)  # the old tree, left by the dead writer
    assert not any(name.startswith(".repository.") for name in siblings(target))


def test_leftovers_of_a_live_writer_are_not_touched(target: Path) -> None:
    live = target.parent / f".repository.staging-{os.getpid()}-abcd1234"
    live.mkdir()
    assert clean_stale(target) == []
    assert live.is_dir()


# -- one writer at a time ----------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tce.lib.staging import repository_lock

    with repository_lock(Path(sys.argv[1]), command="tce build holder-bundle"):
        Path(sys.argv[2]).write_text("held")
        time.sleep(600)
""")


def test_a_second_writer_waits_then_names_the_holder(target: Path, tmp_path: Path) -> None:
    marker = tmp_path / "held"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(LockTimeout) as refused:
            with repository_lock(target, timeout_s=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 5
        message = str(refused.value)
        assert "\n" not in message
        for part in (str(target), "tce build holder-bundle", f"pid {holder.pid}", "waited 0.5 s"):
            assert part in message, message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with repository_lock(target, timeout_s=5):  # the kernel let go of a dead holder's lock
        assert lock_path(target).parent == target.parent


def test_the_lock_is_exclusive_within_one_process_too(target: Path) -> None:
    with repository_lock(target, command="first"):
        with pytest.raises(LockTimeout, match="first"):
            with repository_lock(target, timeout_s=0):
                pass
    with repository_lock(target, timeout_s=0):
        pass


def test_the_lock_file_survives_swaps_of_the_directory(target: Path) -> None:
    with repository_lock(target) as path:
        with staged_directory(target, copy_existing=True) as aside:
            (aside / "new").write_text("x")
        assert path.is_file() and path.parent == target.parent
        with pytest.raises(LockTimeout):
            with repository_lock(target, timeout_s=0):
                pass
    assert not path.exists()  # removed once released


def test_writers_take_turns(target: Path) -> None:
    """Holders remove the lock file on release: a waiter that locked the removed file retries."""
    inside, overlaps, turns = [], [], []

    def writer(name: str) -> None:
        for _ in range(15):
            with repository_lock(target, timeout_s=60, command=name):
                if inside:
                    overlaps.append((name, list(inside)))
                inside.append(name)
                time.sleep(0.002)
                inside.remove(name)
                turns.append(name)

    threads = [threading.Thread(target=writer, args=(f"writer-{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert overlaps == [] and len(turns) == 45
    assert not lock_path(target).exists()
