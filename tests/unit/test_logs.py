"""How ``tce`` logs (tce.lib.logs): notes, progress and errors on stderr, human lines by
default, one JSON object per line with ``--log-format json``; results stay on stdout."""
from __future__ import annotations

import json
import logging

import pytest

from tce.cli import main
from tce.lib.logs import configure
from tce.lib.progress import Progress


@pytest.fixture(autouse=True)
def _human_logging_after():
    yield
    configure("human", "info")


def _json_lines(text: str) -> list[dict]:
    lines = [json.loads(line) for line in text.strip().splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line) and line["time"].endswith("Z")
    return lines


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_format_makes_a_commands_notes_and_its_error_parseable_lines(where, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DEVICE", "cpu")   # seed 001's setting: acknowledged with a note
    (tmp_path / "in.csv").write_text("a\n1\n")
    command = ["predict", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url",
               "127.0.0.1:1"]
    argv = ["--log-format", "json", *command] if where == "before" else [*command, "--log-format", "json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    note, error = _json_lines(captured.err)
    assert (note["level"], note["logger"]) == ("info", "tce.commands.common")
    assert note["message"].startswith("note: DEVICE=cpu: the server decides")
    assert (error["level"], error["logger"]) == ("error", "tce.cli")
    assert error["message"].startswith("tce predict: error: no server listens at 127.0.0.1:1")


def test_human_format_keeps_the_lines_as_they_were(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DEVICE", "cpu")
    (tmp_path / "in.csv").write_text("a\n1\n")
    assert main(["predict", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--url",
                 "127.0.0.1:1"]) == 2
    note, error = capsys.readouterr().err.strip().splitlines()
    assert note.startswith("note: DEVICE=cpu: the server decides") and error.startswith("tce predict: error:")
    assert main(["--log-level", "warning", "predict", "--input", str(tmp_path / "in.csv"), "--output",
                 str(tmp_path / "out"), "--url", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0].startswith("tce predict: error:"), "the note is info"


def test_extra_fields_are_fields_of_the_json_line(capsys):
    configure("json", "info")
    progress = Progress(total=300, label="predict", interval_s=0.0)
    progress.update(120)
    [line] = _json_lines(capsys.readouterr().err)
    assert line["message"].startswith("predict: 120/300 records (40%)")
    assert (line["records_done"], line["records_total"], line["logger"]) == (120, 300, "tce.lib.progress")


def test_a_traceback_stays_in_one_json_line(capsys):
    configure("json", "debug")
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("tce.test").exception("it failed")
    [line] = _json_lines(capsys.readouterr().err)
    assert line["level"] == "error" and "ValueError: broken" in line["exception"]


def test_a_bad_format_from_the_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("TCE_LOG_FORMAT", "xml")
    assert main(["trace", "/nowhere/trace.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "$TCE_LOG_FORMAT must be one of human, json" in err[0]
