"""``tce predict`` as seed 001's batch job, run as a user runs it, against a real server."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tce.lib.demo_data import make_dataset
from tce.repository.builder import write_repository
from tce.serving.processes import kill_group
from tce.serving.server import EmbeddedServer, ServerConfig, free_ports
from tce_client import CalibratedClassifierClient, predictions_to_frame

pytestmark = pytest.mark.e2e

COMMAND = [sys.executable, "-m", "tce.cli", "predict"]
ENV = {**os.environ, "TCE_ADMIN_KEY": "", "TCE_ADMIN_KEY_FILE": ""}


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=600, env=ENV)


def records(rows: int, seed: int) -> pd.DataFrame:
    return make_dataset(rows, seed=seed).drop(columns=["abuse", "reason", "events"])


def sdk_answers(url: str, frame: pd.DataFrame) -> pd.DataFrame:
    with CalibratedClassifierClient(url) as client:
        return predictions_to_frame(client.predict(frame.drop(columns=["record_id"])))


def assert_same_answers(scored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal up to float32 rounding: requests batched differently trim padding differently."""
    pd.testing.assert_frame_equal(scored, expected, check_exact=False, rtol=0, atol=1e-5, check_dtype=False)


@pytest.fixture(scope="module")
def repository(bimodal_bundle, tmp_path_factory) -> Path:
    return write_repository(bimodal_bundle, tmp_path_factory.mktemp("batch") / "repository")


@pytest.fixture(scope="module")
def server(repository):
    with EmbeddedServer(ServerConfig(repository, *free_ports())) as running:
        yield running


def test_a_directory_of_mixed_files_scores_into_one_output_with_markers(server, tmp_path):
    frame = records(90, seed=21)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    frame.iloc[:40].to_csv(inputs / "part-a.csv", index=False)
    frame.iloc[40:65].to_csv(inputs / "part-b.tsv", sep="\t", index=False)
    frame.iloc[65:].to_parquet(inputs / "part-c.parquet")
    (inputs / "_SUCCESS").write_text("")  # an upstream job's marker is not data

    result = predict("--input", str(inputs), "--output", str(tmp_path / "out"), "--url", server.config.grpc_url,
                     "--id-field", "record_id", "--chunk-rows", "16")
    assert result.returncode == 0, result.stderr
    assert "90 predictions written to" in result.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["_HEALTH", "_SUCCESS", "inference_predictions.csv"]  # the first file's format
    assert re.fullmatch(r"healthy: \d{4}-\d\d-\d\dT[\d:.]+\n", (out / "_HEALTH").read_text())
    assert "predict: 90 records" in result.stderr  # plain progress lines when not on a terminal

    scored = pd.read_csv(out / "inference_predictions.csv", float_precision="round_trip")
    expected = sdk_answers(server.config.http_url, frame)
    assert list(scored["record_id"]) == list(frame["record_id"])
    assert list(scored.columns) == ["record_id", *expected.columns]
    assert_same_answers(scored.drop(columns=["record_id"]), expected)


def test_keep_columns_and_parquet_output_over_http(server, tmp_path):
    frame = records(30, seed=22)
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = predict("--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url",
                     server.config.http_url, "--protocol", "http", "--keep-columns", "--format", "parquet")
    assert result.returncode == 0, result.stderr
    scored = pd.read_parquet(tmp_path / "out" / "inference_predictions.parquet")
    assert list(scored.columns[:len(frame.columns)]) == list(frame.columns)
    assert scored["dialogue"].tolist() == frame["dialogue"].tolist()  # text kept exactly
    expected = sdk_answers(server.config.http_url, frame)
    assert_same_answers(scored[expected.columns], expected)


def test_a_rerun_of_a_finished_job_does_nothing_and_other_options_are_refused(server, tmp_path):
    records(20, seed=23).to_csv(tmp_path / "in.csv", index=False)
    args = ["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url", server.config.grpc_url,
            "--id-field", "record_id"]
    assert predict(*args).returncode == 0
    again = predict(*args)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    other = predict(*args, "--chunk-rows", "7")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "with other --chunk-rows" in other.stderr and "--restart" in other.stderr
    assert predict(*args, "--chunk-rows", "7", "--restart").returncode == 0


def _wait_for_parts(out: Path, at_least: int, job: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(out.glob(".tce_job/part-*.parquet"))) < at_least:
        assert job.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "no chunk was saved in time"
        time.sleep(0.02)


def test_killed_server_and_killed_job_resume_to_every_row_once_in_order(repository, tmp_path):
    """The server dies mid-job, then the job itself is killed: each rerun of the same
    command continues, and the output is every input row exactly once, in order."""
    frame = records(4000, seed=24)
    frame.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out"
    ports = free_ports()
    server = EmbeddedServer(ServerConfig(repository, *ports)).start()
    args = ["--input", str(tmp_path / "in.parquet"), "--output", str(out), "--url", server.config.grpc_url,
            "--id-field", "record_id", "--chunk-rows", "100", "--max-in-flight", "1"]
    try:
        job = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        _wait_for_parts(out, 3, job)
        assert server.process is not None
        kill_group(server.process.pid)  # the server crashes mid-job
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 2, stderr
        assert "Traceback" not in stderr and "rerun the same command to continue" in stderr
        assert not (out / "_SUCCESS").exists() and not (out / "inference_predictions.parquet").exists()
        saved = len(list(out.glob(".tce_job/part-*.parquet")))
        assert 3 <= saved < 40

        server.restart()  # same ports: the same command works again
        job = subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        _wait_for_parts(out, saved + 3, job)
        job.send_signal(signal.SIGKILL)  # and now the job itself is killed
        job.communicate(timeout=60)

        final = predict(*args)
        assert final.returncode == 0, final.stderr
        scored_now = int(re.search(r"this run scored (\d+) records", final.stdout).group(1))
        assert scored_now <= 4000 - (saved + 3) * 100

        scored = pd.read_parquet(out / "inference_predictions.parquet")
        assert scored["record_id"].tolist() == frame["record_id"].tolist()
        expected = sdk_answers(server.config.http_url, frame)
        assert_same_answers(scored.drop(columns=["record_id"]), expected)
        assert (out / "_SUCCESS").exists() and not list(out.glob(".tce_job/part-*"))
    finally:
        server.stop()


def _tamper(part: Path, how: str) -> None:
    """What a disk, a sync tool or a person can do to a saved part."""
    import pyarrow.parquet as pq

    if how == "garbage":
        part.write_bytes(b"not a parquet file at all")
        return
    table = pq.read_table(part)
    import pyarrow as pa

    changed = table.slice(0, 4) if how == "shorter" else pa.concat_tables([table, table])
    pq.write_table(changed, part)


def _partial_run(job, stop_after: int, monkeypatch) -> None:
    """A run killed after ``stop_after`` chunks were saved."""
    from tce.jobs.predict import run_predict
    from tce.lib.parts import JobDirectory

    original, saved = JobDirectory.write, []

    def write_then_die(self, index, table, start=0):
        original(self, index, table, start)
        saved.append(index)
        if len(saved) == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(JobDirectory, "write", write_then_die)
    with pytest.raises(Exception, match="rows are saved"):
        run_predict(job, note=lambda _: None)
    monkeypatch.setattr(JobDirectory, "write", original)


def test_tampered_parts_are_scored_again_never_trusted(server, tmp_path, monkeypatch):
    from tce.jobs.predict import PredictJob, run_predict

    frame = records(600, seed=31)
    frame.to_csv(tmp_path / "in.csv", index=False)
    job = PredictJob(tmp_path / "in.csv", tmp_path / "out", url=server.config.grpc_url, id_field="record_id",
                     chunk_rows=50, max_in_flight=2, progress_interval_s=3600)
    _partial_run(job, stop_after=6, monkeypatch=monkeypatch)
    parts = sorted((tmp_path / "out" / ".tce_job").glob("part-*.parquet"))
    assert len(parts) >= 3
    for part, how in zip(parts, ("shorter", "doubled", "garbage"), strict=False):
        _tamper(part, how)
    notes: list[str] = []
    result = run_predict(job, note=notes.append)
    scored = pd.read_csv(result.path)
    assert scored["record_id"].tolist() == frame["record_id"].tolist()  # every row once, in order
    assert result.scored >= 3 * 50  # the three tampered chunks were scored again
    assert_same_answers(scored.drop(columns=["record_id"]), sdk_answers(server.config.http_url, frame))
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_a_part_changed_during_the_run_is_caught_before_the_markers(server, tmp_path, monkeypatch):
    from tce.jobs.predict import PredictJob, run_predict
    from tce.lib.parts import JobDirectory

    frame = records(300, seed=32)
    frame.to_csv(tmp_path / "in.csv", index=False)
    original = JobDirectory.write

    def write_and_spoil_part_one(self, index, table, start=0):
        original(self, index, table, start)
        if index == 3:  # part 1 is long saved: change it behind the job's back, once
            _tamper(self._part(1), "shorter")
            monkeypatch.setattr(JobDirectory, "write", original)

    monkeypatch.setattr(JobDirectory, "write", write_and_spoil_part_one)
    notes: list[str] = []
    job = PredictJob(tmp_path / "in.csv", tmp_path / "out", url=server.config.grpc_url, id_field="record_id",
                     chunk_rows=50, max_in_flight=2, progress_interval_s=3600)
    result = run_predict(job, note=notes.append)
    assert any("did not match their record ([1])" in n for n in notes), notes
    assert pd.read_csv(result.path)["record_id"].tolist() == frame["record_id"].tolist()


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    import errno

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tce.lib.parts import JobDirectory
    from tce_backends.errors import UsageError

    job = JobDirectory(tmp_path / "out", {"x": 1}, ("result.csv",))

    def disk_full(table, where, **_):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", disk_full)
    with pytest.raises(UsageError, match="cannot write in .*: No space left on device"):
        job.write(0, pa.table({"x": [1]}))
    assert not list((tmp_path / "out").rglob("*.tmp")), "nothing half-written is left behind"
    assert not job.done(0)


def test_shards_fan_out_and_join_into_the_one_output(server, tmp_path):
    """Three shards of one input (two at once, as an Indexed Job runs them): one output with
    every row once, in input order, equal to the SDK's answers."""
    frame = records(700, seed=33)
    frame.to_parquet(tmp_path / "in.parquet")
    base = ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--url",
            server.config.grpc_url, "--id-field", "record_id", "--chunk-rows", "50"]
    first = [subprocess.Popen([*COMMAND, *base, "--shard", f"{i}/3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for i in (0, 2)]
    outcomes = [job.communicate(timeout=300) for job in first]
    assert all(job.returncode == 0 for job in first), outcomes
    assert all("of 3 shards done" in out for out, _ in outcomes)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    last = predict(*base, "--shard", "1/3")
    assert last.returncode == 0, last.stderr
    scored = pd.read_parquet(tmp_path / "out" / "inference_predictions.parquet")
    assert scored["record_id"].tolist() == frame["record_id"].tolist()
    assert_same_answers(scored.drop(columns=["record_id"]), sdk_answers(server.config.http_url, frame))
    assert (tmp_path / "out" / "_SUCCESS").is_file()
    again = predict(*base, "--shard", "0/3")
    assert again.returncode == 0 and "nothing to do" in again.stdout
