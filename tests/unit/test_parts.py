"""tce.lib.parts: saved chunks, the job's identity, markers only at the end."""
from __future__ import annotations

import re

import pyarrow as pa
import pytest

from tce.lib.parts import HEALTH, SUCCESS, JobDirectory
from tce_backends.errors import UsageError

IDENTITY = {"input files": [{"file": "in.csv", "bytes": 10}], "--chunk-rows": 2}


def _join(parts, target) -> None:
    target.write_text(",".join(str(v) for part in parts for v in part.column("x").to_pylist()))


def test_parts_are_joined_in_order_and_markers_come_last(tmp_path):
    job = JobDirectory(tmp_path / "out", IDENTITY, ("result.txt",))
    job.write(1, pa.table({"x": [3, 4]}))
    job.write(0, pa.table({"x": [1, 2]}))
    assert not (tmp_path / "out" / SUCCESS).exists() and job.rows_done() == 4
    with pytest.raises(UsageError, match="lacks the chunks \\[2\\]"):
        job.finish(3, _join, "result.txt")
    assert not (tmp_path / "out" / SUCCESS).exists()
    job.finish(2, _join, "result.txt")
    assert (tmp_path / "out" / "result.txt").read_text() == "1,2,3,4"
    assert (tmp_path / "out" / SUCCESS).read_text() == ""
    assert re.fullmatch(r"healthy: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\n", (tmp_path / "out" / HEALTH).read_text())
    assert not list((tmp_path / "out").glob(".tce_job/part-*"))


def test_a_rerun_finds_the_saved_chunks_and_a_finished_job(tmp_path):
    job = JobDirectory(tmp_path, IDENTITY, ("result.txt",))
    job.write(0, pa.table({"x": [1, 2]}))
    again = JobDirectory(tmp_path, IDENTITY, ("result.txt",))
    assert again.done(0) and not again.done(1) and not again.finished
    again.finish(1, _join, "result.txt")
    assert JobDirectory(tmp_path, IDENTITY, ("result.txt",)).finished


def test_another_job_is_refused_until_restart(tmp_path):
    JobDirectory(tmp_path, IDENTITY, ("result.txt",)).write(0, pa.table({"x": [1]}))
    (tmp_path / "unrelated.txt").write_text("mine")
    other = {**IDENTITY, "--chunk-rows": 5}
    with pytest.raises(UsageError, match="a partial run .* with other --chunk-rows: add --restart"):
        JobDirectory(tmp_path, other, ("result.txt",))
    restarted = JobDirectory(tmp_path, other, ("result.txt",), restart=True)
    assert not restarted.done(0)
    assert (tmp_path / "unrelated.txt").read_text() == "mine"  # --restart removes only the job's files


def test_finished_output_of_something_else_is_not_overwritten(tmp_path):
    (tmp_path / SUCCESS).write_text("")
    with pytest.raises(UsageError, match="finished output of another job"):
        JobDirectory(tmp_path, IDENTITY, ("result.txt",))


def test_a_job_that_saved_nothing_starts_over_when_its_inputs_change(tmp_path):
    """The user fixed the input file after a failed first try: the same command just runs."""
    JobDirectory(tmp_path, IDENTITY, ("result.txt",))  # failed before its first chunk was saved
    fixed = {**IDENTITY, "input files": [{"file": "in.csv", "bytes": 12}]}
    again = JobDirectory(tmp_path, fixed, ("result.txt",))
    assert not again.done(0)
    again.write(0, pa.table({"x": [1]}))
    with pytest.raises(UsageError, match=r"a partial run \(1 rows saved; .*\) of a job with other input files"):
        JobDirectory(tmp_path, IDENTITY, ("result.txt",))


def test_shards_score_disjoint_chunks_and_the_last_one_joins_them_in_input_order(tmp_path):
    from tce.lib.parts import combine_shards, parse_shard

    identity = {**IDENTITY, "--shard (parts)": 3}
    chunks = [pa.table({"x": [2 * c, 2 * c + 1]}) for c in range(7)]
    shards = [JobDirectory(tmp_path, identity, ("result.txt",), shard=(i, 3)) for i in range(3)]
    assert [c for c in range(7) if shards[1].mine(c)] == [1, 4]
    for shard in shards:
        for c in range(7):
            if shard.mine(c):
                shard.write(c, chunks[c], start=2 * c)
    assert shards[2].finish(7, _join, "result.txt") is None  # shards 0 and 1 are not done yet
    assert shards[0].finish(7, _join, "result.txt") is None
    joined = shards[1].finish(7, _join, "result.txt")
    assert joined is not None and joined.read_text() == ",".join(str(v) for v in range(14))
    assert (tmp_path / SUCCESS).is_file() and not list(tmp_path.glob(".tce_job/shard-*"))
    assert JobDirectory(tmp_path, identity, ("result.txt",), shard=(2, 3)).finished  # a rerun: nothing to do
    assert combine_shards(tmp_path, 3, identity, _join, "result.txt") == joined
    assert parse_shard("2/8") == (2, 8)
    for wrong in ("8/8", "a/2", "1", "-1/2"):
        with pytest.raises(UsageError, match="--shard takes I/N"):
            parse_shard(wrong)
