"""The gateway's prediction log (tce_gateway.prediction_log): what an entry holds, sampling,
a bounded queue that drops rather than waits, size rotation, and files that only ever hold
whole lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tce_client.schema import EnsembleSchema, TaskInfo
from tce_gateway.config import PredictionLogConfig
from tce_gateway.prediction_log import (
    Answered,
    LogFiles,
    PredictionLog,
    PredictionLogError,
    active_file,
    caller_id,
    entries,
    read_lines,
    rotated_files,
    timestamp,
)
from tce_gateway.signatures import ModelSignature
from tce_gateway.tensors import InferRequest, InputTensor
from tce_gateway.upstream import HttpAnswer

SCHEMA = EnsembleSchema(
    text_fields=("dialogue",), numeric_features=("amount", "age"), categorical_features=("market",),
    feature_order=("amount", "age", "market"),
    tasks=(TaskInfo("abuse", "binary", ("legit", "abusive"),
                    {"raw": "abuse_raw", "calibrated": "abuse_calibrated", "label": "abuse_label"}),
           TaskInfo("reason", "multiclass", ("none", "late", "fraud"),
                    {"raw": "reason_raw", "calibrated": "reason_calibrated", "label": "reason_label"})),
    inputs={"numeric": "numeric_features", "categorical": "categorical_features"},
    outputs={"calibration_version": "calibration_version", "calibration_fallback": "calibration_fallback",
             "release": "release"})
SIGNATURE = ModelSignature("ens", 8, {}, {}, SCHEMA.to_json())


def _answer(records: int, decision: bool = False, classification: bool = False) -> HttpAnswer:
    """Triton's JSON answer for ``records`` records of SCHEMA's ensemble."""
    outputs = [
        {"name": "abuse_raw", "datatype": "FP32", "shape": [records, 2], "data": [0.75, 0.25] * records},
        {"name": "abuse_calibrated", "datatype": "FP32", "shape": [records, 2], "data": [0.875, 0.125] * records},
        {"name": "abuse_label", "datatype": "BYTES", "shape": [records, 1], "data": ["legit"] * records},
        {"name": "reason_calibrated", "datatype": "FP32", "shape": [records, 3], "data": [0.5, 0.25, 0.25] * records},
        {"name": "calibration_version", "datatype": "BYTES", "shape": [records, 1], "data": ["v7"] * records},
        {"name": "calibration_fallback", "datatype": "BOOL", "shape": [records, 2], "data": [False, True] * records},
        {"name": "release", "datatype": "BYTES", "shape": [records, 1], "data": ["2"] * records}]
    if decision:
        outputs.append({"name": "abuse_decision", "datatype": "BYTES", "shape": [records, 1],
                        "data": ["review"] * records})
    if classification:  # the caller asked for top-k classes: text where scores were
        outputs.append({"name": "reason_raw", "datatype": "BYTES", "shape": [records, 1],
                        "data": ["0.5:0:none"] * records})
    return HttpAnswer(200, {}, json.dumps({"model_name": "ens", "outputs": outputs}).encode())


def _frames(texts: list[str]) -> bytes:
    return b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)


def _request(records: int, request_id: str = "") -> InferRequest:
    numbers = np.array([[12.5, np.nan]] * records, dtype="<f8")
    return InferRequest("ens", "", request_id, (
        InputTensor("dialogue", "BYTES", (records, 1), _frames([f"text {i}" for i in range(records)])),
        InputTensor("numeric_features", "FP64", (records, 2), numbers.tobytes()),
        InputTensor("categorical_features", "BYTES", (records, 1), _frames(["US"] * records))), ())


def _answered(records: int = 1, request_id: str = "req-1", **answer: bool) -> Answered:
    return Answered(1796000000.25, request_id, "request", _request(records, request_id), SIGNATURE,
                    _answer(records, **answer))


def test_an_entry_holds_the_id_time_versions_and_each_tasks_answer():
    [entry] = entries(_answered(), SCHEMA)
    assert entry["id"] == entry["request_id"] == "req-1" and entry["record"] == 0
    assert entry["timestamp"] == timestamp(1796000000.25) == "2026-11-30T00:53:20.250Z"
    assert (entry["release"], entry["calibration_version"], entry["model"]) == ("2", "v7", "ens")
    abuse = entry["tasks"]["abuse"]
    assert abuse == {"raw": {"legit": 0.75, "abusive": 0.25}, "calibrated": {"legit": 0.875, "abusive": 0.125},
                     "label": "legit", "calibration_fallback": False}
    # Only what was answered: reason's raw scores and label were not asked for.
    assert entry["tasks"]["reason"] == {"calibrated": {"none": 0.5, "late": 0.25, "fraud": 0.25},
                                        "calibration_fallback": True}
    assert "inputs" not in entry
    json.dumps(entry, allow_nan=False)


def test_decision_is_logged_when_the_answer_has_it_and_text_scores_are_not_read_as_scores():
    [entry] = entries(_answered(decision=True, classification=True), SCHEMA)
    assert entry["tasks"]["abuse"]["decision"] == "review"
    assert "raw" not in entry["tasks"]["reason"]


def test_records_of_one_request_get_their_own_ids_and_inputs_as_a_record():
    found = entries(_answered(records=3, request_id="batch-9"), SCHEMA, inputs=True)
    assert [e["id"] for e in found] == ["batch-9/0", "batch-9/1", "batch-9/2"]
    assert {e["request_id"] for e in found} == {"batch-9"} and [e["record"] for e in found] == [0, 1, 2]
    assert found[2]["inputs"] == {"dialogue": "text 2", "amount": 12.5, "age": None, "market": "US"}


def test_sampling_draws_per_request_at_the_rate(tmp_path):
    draws = iter([0.05, 0.5, 0.19, 0.2, 0.99])

    class Draws:
        def random(self) -> float:
            return next(draws)

    log = PredictionLog(PredictionLogConfig(str(tmp_path), rate=0.2), "0", rng=Draws(), log=lambda _: None)
    ids = [log.offer(_request(1, f"r{i}"), SIGNATURE, _answer(1)) for i in range(5)]
    assert ids == ["r0", None, "r2", None, None]
    assert log.logged == 2
    every = PredictionLog(PredictionLogConfig(str(tmp_path), rate=1.0), "1", log=lambda _: None)
    assert all(every.offer(_request(1, f"r{i}"), SIGNATURE, _answer(1)) for i in range(20))


def test_only_answered_requests_of_tce_ensembles_are_logged_and_ids_come_from_the_caller_first(tmp_path):
    log = PredictionLog(PredictionLogConfig(str(tmp_path)), "0", log=lambda _: None)
    assert log.offer(_request(1), SIGNATURE, HttpAnswer(400, {}, b'{"error": "no"}')) is None
    assert log.offer(_request(1), ModelSignature("step", 8, {}, {}), _answer(1)) is None
    assert log.offer(_request(1, "own"), SIGNATURE, _answer(1), caller_id="header-id") == "own"
    assert log.offer(_request(1), SIGNATURE, _answer(1), caller_id="header-id") == "header-id"
    made = log.offer(_request(1), SIGNATURE, _answer(1))
    assert made and len(made) == 32
    with log:
        pass
    sources = [json.loads(line)["id_source"] for line in read_lines(active_file(tmp_path, "0"))]
    assert sources == ["request", "header", "gateway"]


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    said: list[str] = []
    log = PredictionLog(PredictionLogConfig(str(tmp_path), queue_entries=2), "0", log=said.append)
    results = [log.offer(_request(1, f"r{i}"), SIGNATURE, _answer(1)) for i in range(5)]  # no writer yet
    assert results == ["r0", "r1", None, None, None]
    assert (log.logged, log.dropped) == (2, 3)
    assert len(said) == 1 and "3 dropped" not in said[0] and "1 dropped (queue full)" in said[0]
    log.start()
    log.close()
    assert [json.loads(line)["id"] for line in read_lines(active_file(tmp_path, "0"))] == ["r0", "r1"]
    assert "2 records written, 3 dropped (queue full)" in said[-1]


def _lines(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"id": f"r{i}", "pad": "x" * 90}).encode() + b"\n" for i in range(start, start + count)]


def test_files_rotate_by_size_and_keep_the_newest(tmp_path):
    files = LogFiles(tmp_path, "3", max_file_bytes=4096, keep_files=2).open()
    for batch in range(10):
        files.append(_lines(20, batch * 20))  # 200 lines of ~110 bytes: several rotations
    files.close()
    kept = rotated_files(tmp_path, "3")
    assert len(kept) == 2
    every = [*kept, active_file(tmp_path, "3")]
    assert all(p.stat().st_size <= 4096 for p in every)
    ids = [int(json.loads(line)["id"][1:]) for p in every for line in read_lines(p)]
    assert ids == list(range(ids[0], 200)), "the newest lines, in order, none lost between the kept files"
    assert all(p.read_bytes().endswith(b"\n") for p in every)


def test_a_reader_never_takes_a_line_still_being_written(tmp_path):
    path = tmp_path / "predictions-0.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "tas')
    assert [json.loads(line)["id"] for line in read_lines(path)] == ["a", "b"]


def test_a_half_line_left_by_a_killed_worker_is_cut_when_its_file_is_opened_again(tmp_path):
    path = active_file(tmp_path, "0")
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "tas')
    files = LogFiles(tmp_path, "0", 1 << 20, 2).open()
    files.append(_lines(1))
    files.close()
    assert [json.loads(line)["id"] for line in read_lines(path)] == ["a", "r0"]
    assert path.read_bytes().count(b"\n") == 2 and path.read_bytes().endswith(b"\n")


def test_a_write_the_disk_cuts_short_leaves_no_half_line(tmp_path):
    """A real short write: the process may not grow files past 300 bytes (RLIMIT_FSIZE)."""
    script = f"""
import resource, signal, sys
from pathlib import Path
sys.path[:0] = {[str(Path(__file__).resolve().parents[2] / d) for d in ("gateway", "client", "python_backends")]!r}
from tce_gateway.prediction_log import LogFiles
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
files = LogFiles(Path({str(tmp_path)!r}), "0", 1 << 20, 2).open()
files.append([b'{{"id": "r%d", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}\\n' % i for i in range(3)])
try:
    files.append([b'{{"id": "r%d", "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}\\n' % i for i in range(3, 6)])
except OSError as error:
    print("refused", error.errno)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "refused" in result.stdout, result.stderr
    data = active_file(tmp_path, "0").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 3, data


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    first = LogFiles(tmp_path, "0", 1 << 20, 2).open()
    try:
        with pytest.raises(PredictionLogError, match="another gateway writes"):
            LogFiles(tmp_path, "0", 1 << 20, 2).open()
        LogFiles(tmp_path, "1", 1 << 20, 2).open().close()  # another worker: its own file
    finally:
        first.close()
    LogFiles(tmp_path, "0", 1 << 20, 2).open().close()  # released with the first


def test_an_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PredictionLogError, match="cannot write in"):
        LogFiles(blocker / "logs", "0", 1 << 20, 2).open()


@pytest.mark.parametrize("settings, words", [
    ({"rate": 0}, "rate must be in (0, 1]"), ({"rate": 1.5}, "rate must be in (0, 1]"),
    ({"max_file_bytes": 10}, "max_file_bytes must be >= 4096"), ({"keep_files": 0}, "keep_files"),
    ({"queue_entries": 0}, "queue_entries"), ({"directory": " "}, "directory must be a path"),
])
def test_settings_are_checked_when_made(settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        PredictionLogConfig(**{"directory": "/tmp/x", **settings})


def test_a_callers_id_header_is_checked():
    assert caller_id(None, 256) is None and caller_id("order-17", 256) == "order-17"
    for bad in ("", "x" * 257, "tab\there", "ünï"):
        with pytest.raises(ValueError, match="X-Request-Id header must be 1 to 256 printable ASCII"):
            caller_id(bad, 256)


def test_the_gateway_option_reads_the_image_environment(monkeypatch):
    from tce_gateway.__main__ import parser
    from tce_gateway.options import prediction_log_config

    assert prediction_log_config(parser().parse_args(["--triton", "t:8000,t:8001"])) is None
    for name, value in (("TCE_PREDICTION_LOG", "/var/log/tce"), ("TCE_PREDICTION_LOG_RATE", "0.25"),
                        ("TCE_PREDICTION_LOG_INPUTS", "1")):
        monkeypatch.setenv(name, value)
    config = prediction_log_config(parser().parse_args(["--triton", "t:8000,t:8001"]))
    assert config == PredictionLogConfig("/var/log/tce", rate=0.25, inputs=True)
