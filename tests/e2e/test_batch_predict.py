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
    if "release" in scored:  # a release number reads back from CSV as an integer
        scored = scored.assign(release=scored["release"].astype(str))
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

    def write_then_die(self, index, table, start=0, **extra):
        original(self, index, table, start, **extra)
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

    def write_and_spoil_part_one(self, index, table, start=0, **extra):
        original(self, index, table, start, **extra)
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


# -- records that cannot be scored (issue 23) -------------------------------------------

BAD_TEXT_ROW, BAD_NUMBER_ROW, UNUSED_ROW = 7, 150, 30


def bad_records_file(path: Path, rows: int = 300) -> pd.DataFrame:
    """A CSV with one dialogue that is not UTF-8, one amount that is no number, and a bad
    byte in a column nothing reads (which rejects nothing); returns the records."""
    frame = records(rows, seed=41)
    frame["order_amount"] = frame["order_amount"].astype(object)
    frame.loc[BAD_NUMBER_ROW, "order_amount"] = "12,5x"
    frame.loc[BAD_TEXT_ROW, "dialogue"] = "BAD-TEXT"
    frame["note"] = "fine"
    frame.loc[UNUSED_ROW, "note"] = "BAD-NOTE"
    data = frame.to_csv(index=False).encode("utf-8")
    path.write_bytes(data.replace(b"BAD-TEXT", b"caf\xe9 latin-1").replace(b"BAD-NOTE", b"\xff"))
    return frame


def test_bad_records_are_left_out_and_listed_and_the_job_succeeds(server, tmp_path):
    frame = bad_records_file(tmp_path / "in.csv")
    result = predict("--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url",
                     server.config.grpc_url, "--id-field", "record_id", "--chunk-rows", "64")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert "298 predictions written" in result.stdout
    assert f"note: 2 records could not be scored and are left out of the predictions; {out}/inference_rejects.csv " \
           "lists them" in result.stderr  # a note: logged on stderr, the result on stdout
    assert (out / "_SUCCESS").is_file() and (out / "_HEALTH").is_file()

    rejects = pd.read_csv(out / "inference_rejects.csv")
    assert list(rejects.columns) == ["record_id", "file", "row", "field", "reason"]
    ids = frame["record_id"]
    assert rejects[["record_id", "file", "row", "field"]].values.tolist() == [
        [ids[BAD_TEXT_ROW], "in.csv", BAD_TEXT_ROW + 1, "dialogue"],
        [ids[BAD_NUMBER_ROW], "in.csv", BAD_NUMBER_ROW + 1, "order_amount"]]
    assert "not valid UTF-8 text (byte 0xe9 at position 3)" in rejects["reason"][0]
    assert "expected a number or null" in rejects["reason"][1] and "'12,5x'" in rejects["reason"][1]

    good = frame.drop(index=[BAD_TEXT_ROW, BAD_NUMBER_ROW]).drop(columns=["note"]).reset_index(drop=True)
    scored = pd.read_csv(out / "inference_predictions.csv", float_precision="round_trip")
    assert scored["record_id"].tolist() == good["record_id"].tolist()  # the others, once each, in order
    good["order_amount"] = good["order_amount"].astype(float)
    assert_same_answers(scored.drop(columns=["record_id"]), sdk_answers(server.config.http_url, good))


def test_past_max_rejects_the_job_fails_with_one_line_and_no_marker_then_resumes(server, tmp_path):
    bad_records_file(tmp_path / "in.csv")
    args = ["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url", server.config.grpc_url,
            "--id-field", "record_id", "--chunk-rows", "64"]
    failed = predict(*args, "--max-rejects", "1")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    # progress ("predict: ...") and a busy server's notes ("note: ...") may come first, on a loaded machine
    others = [line for line in failed.stderr.splitlines() if not line.startswith(("predict: ", "note: "))]
    assert len(others) == 1, failed.stderr
    (line,) = others
    assert line.startswith("tce predict: error: ")
    assert "2 of 300 records could not be scored, more than --max-rejects allows (1)" in line
    assert f"{tmp_path / 'out' / 'inference_rejects.csv'} lists them" in line
    out = tmp_path / "out"
    assert len(pd.read_csv(out / "inference_rejects.csv")) == 2
    assert not (out / "_SUCCESS").exists() and not (out / "_HEALTH").exists()
    assert not (out / "inference_predictions.csv").exists()

    again = predict(*args, "--max-rejects", "1%")  # the scored chunks were kept: nothing is scored twice
    assert again.returncode == 0, again.stderr
    assert "298 predictions written" in again.stdout and "this run scored 0 records" in again.stdout
    assert (out / "_SUCCESS").is_file()


def test_the_rejects_of_every_shard_are_joined_like_the_predictions(server, tmp_path):
    from tce.jobs.predict import PredictJob, run_predict

    frame = bad_records_file(tmp_path / "in.csv", rows=200)
    results = [run_predict(PredictJob(tmp_path / "in.csv", tmp_path / "out", url=server.config.grpc_url,
                                      id_field="record_id", chunk_rows=40, shard=(i, 2), progress_interval_s=3600),
                           note=lambda _: None) for i in (1, 0)]
    assert results[0].path is None and results[1].rejected == 2
    rejects = pd.read_csv(tmp_path / "out" / "inference_rejects.csv")
    assert rejects["row"].tolist() == [BAD_TEXT_ROW + 1, BAD_NUMBER_ROW + 1]  # shard 0's, then shard 1's
    scored = pd.read_csv(tmp_path / "out" / "inference_predictions.csv")
    assert scored["record_id"].tolist() == frame["record_id"].drop(index=[BAD_TEXT_ROW, BAD_NUMBER_ROW]).tolist()


def test_evaluate_leaves_rejected_records_out_of_the_metrics_and_says_how_many(server, tmp_path):
    from tce.lib.demo_data import write_demo_records

    frame = write_demo_records(tmp_path / "labelled.csv", rows=120, seed=6, labels=True)
    data = (tmp_path / "labelled.csv").read_bytes()
    first_id = frame["record_id"][3].encode()
    quoted = data.count(first_id + b',"') == 1  # the dialogue of row 4 starts with a bad byte
    bad = data.replace(first_id + b',"', first_id + b',"\xff', 1) if quoted else \
        data.replace(first_id + b",", first_id + b",\xff", 1)
    assert bad != data
    (tmp_path / "labelled.csv").write_bytes(bad)
    result = subprocess.run([sys.executable, "-m", "tce.cli", "evaluate", "--input", str(tmp_path / "labelled.csv"),
                             "--out", str(tmp_path / "eval"), "--url", server.config.grpc_url, "--task", "abuse",
                             "--bootstrap-samples", "0", "--max-rejects", "2"],
                            capture_output=True, text=True, timeout=300, env={**ENV, "ID_FIELD": "record_id",
                                                                                "LABEL_FIELD": "label_abuse"})
    assert result.returncode == 0, result.stderr
    assert "note: 1 records could not be scored and are left out of the metrics" in result.stderr
    rejects = pd.read_csv(tmp_path / "eval" / "eval_rejects.csv")
    assert rejects[["record_id", "row", "field"]].values.tolist() == [[frame["record_id"][3], 4, "dialogue"]]
    import json

    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["records"] == 119
