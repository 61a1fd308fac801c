"""Late labels joined to the gateway's prediction log (tce.jobs.evaluate_log, ``tce evaluate
--predictions LOG --labels LABELS.csv``): windows, metrics per window, and the mistakes that
are errors."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tce.cli import main
from tce.jobs.evaluate_log import LogEvaluationJob, LogEvaluationReport, log_files, run_log_evaluation, window_of
from tce.lib.calibration_metrics import task_metrics
from tce_backends.errors import UsageError

# 2026-11-30 is a Monday: the first three days are ISO week 49, 2026-12-07 starts week 50.
DAYS = ("2026-11-30", "2026-12-01", "2026-12-02", "2026-12-07")


def _entry(index: int, day: str, score: float, reason: list[float]) -> dict:
    return {"id": f"r{index}", "request_id": f"r{index}", "record": 0,
            "timestamp": f"{day}T10:00:{index % 60:02d}.000Z", "model": "ens", "release": "1",
            "calibration_version": "v1", "id_source": "request",
            "tasks": {"abuse": {"raw": {"legit": 1 - score, "abusive": score},
                                "calibrated": {"legit": 1 - score / 2, "abusive": score / 2}, "label": "legit"},
                      "reason": {"calibrated": dict(zip(("none", "late", "fraud"), reason, strict=True))}}}


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two workers' files, 30 records a day; the last line of one is still being written."""
    rng = np.random.default_rng(4)
    directory = tmp_path_factory.mktemp("log")
    lines: list[list[str]] = [[], []]
    index = 0
    for day in DAYS:
        for _ in range(30):
            reason = rng.dirichlet([1, 1, 1]).round(6).tolist()
            lines[index % 2].append(json.dumps(_entry(index, day, round(float(rng.uniform()), 6), reason)))
            index += 1
    (directory / "predictions-0-20261201T000000000000Z.jsonl").write_text("\n".join(lines[0][:50]) + "\n")
    (directory / "predictions-0.jsonl").write_text("\n".join(lines[0][50:]) + "\n")
    (directory / "predictions-1.jsonl").write_text("\n".join(lines[1]) + '\n{"id": "r999", "tim')
    return directory


def _labels(tmp_path: Path, log_dir: Path, rows: int = 100, **columns: object) -> Path:
    """Labels for the first ``rows`` logged ids (of 120), plus two ids the log never sampled."""
    rng = np.random.default_rng(5)
    ids = [f"r{i}" for i in range(rows)] + ["not-sampled-1", "not-sampled-2"]
    frame = pd.DataFrame({"id": ids, "label_abuse": rng.choice(["legit", "abusive"], len(ids)),
                          "label_reason": rng.choice([0, 1, 2], len(ids)).astype(object)})
    frame.loc[3, "label_reason"] = None  # not known yet
    for name, value in columns.items():
        if value is None:
            frame = frame.drop(columns=[name])
        else:
            frame[name] = value
    path = tmp_path / "labels.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def daily(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, LogEvaluationReport]:
    """The labels and the daily report (bins 10), written once for the tests that read them."""
    folder = tmp_path_factory.mktemp("daily")
    labels = _labels(folder, log_dir)
    return labels, folder / "out", run_log_evaluation(LogEvaluationJob(str(log_dir), labels, folder / "out", bins=10))


def test_windows_by_day_and_week(tmp_path, log_dir, daily):
    labels, _, report = daily
    abuse = [w for w in report.windows if w.task == "abuse"]
    assert [w.window for w in abuse] == list(DAYS)
    assert [w.records for w in abuse] == [30, 30, 30, 10]
    join = report.join
    assert (join.log_entries, join.matched, join.labels_without_prediction) == (120, 100, 2)
    assert (join.predictions_without_label, join.incomplete_lines, join.log_files) == (20, 1, 3)
    assert any("1 joined records have no 'reason' label yet" in note for note in report.notes)

    weekly = run_log_evaluation(LogEvaluationJob(str(log_dir), labels, tmp_path / "weekly", window="week"))
    by_week = {(w.task, w.window): w for w in weekly.windows}
    assert by_week["abuse", "2026-W49"].records == 90 and by_week["abuse", "2026-W49"].start == "2026-11-30"
    assert by_week["abuse", "2026-W50"].records == 10 and by_week["reason", "2026-W49"].records == 89


def test_a_windows_metrics_are_those_of_its_records(log_dir, daily):
    labels, out, report = daily
    first = next(w for w in report.windows if w.task == "abuse" and w.window == DAYS[0])
    lines = [json.loads(line) for p in sorted(log_dir.glob("*.jsonl")) for line in p.read_text().splitlines()
             if line.endswith("}")]
    entries = {e["id"]: e for e in lines if e["timestamp"].startswith(DAYS[0])}
    frame = pd.read_csv(labels)
    frame = frame[frame["id"].isin(entries)]
    truth = (frame["label_abuse"] == "abusive").to_numpy().astype(int)
    calibrated = np.array([[entries[i]["tasks"]["abuse"]["calibrated"][c] for c in ("legit", "abusive")]
                           for i in frame["id"]])
    assert first.metrics["calibrated"] == task_metrics(calibrated, truth, 10)
    assert first.metrics["raw"].ece != first.metrics["calibrated"].ece
    reason = [w for w in report.windows if w.task == "reason"]
    assert all("raw" not in w.metrics for w in reason), "the log holds no raw scores of reason"

    written = json.loads((out / "log_metrics.json").read_text())
    assert written["join"]["matched"] == 100 and len(written["windows"]) == 8
    assert written["windows"][0]["ece_calibrated"] == round(first.metrics["calibrated"].ece, 6)
    table = pd.read_csv(out / "log_metrics.csv")
    assert list(table["task"]) == ["abuse"] * 4 + ["reason"] * 4
    assert (out / "calibration_over_time_abuse.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "reliability" / "reason").iterdir()) == [f"{d}.png" for d in DAYS]


def test_auroc_is_left_undefined_where_a_window_holds_one_class(tmp_path, log_dir):
    labels = _labels(tmp_path, log_dir, label_abuse="legit")
    report = run_log_evaluation(LogEvaluationJob(str(log_dir), labels, tmp_path / "out", task="abuse"))
    assert all(math.isnan(w.metrics["calibrated"].auroc) for w in report.windows)
    assert {w.task for w in report.windows} == {"abuse"}
    written = json.loads((tmp_path / "out" / "log_metrics.json").read_text())
    assert written["windows"][0]["auroc_calibrated"] is None


@pytest.mark.parametrize("change, words", [
    ({"join_on": "request"}, "has no id column 'request' (--join-on); its columns: id, label_abuse"),
    ({"drop": "label_reason"}, "no label column 'label_reason' for task 'reason'"),
    ({"ids": "other"}, "no id of"),
    ({"ids": "repeated"}, "ids appear more than once"),
    ({"task": "fraud"}, "--task 'fraud' is not in the prediction log"),
    ({"labels": {"label_abuse": "maybe"}}, "not classes of 'abuse'"),
])
def test_mistakes_are_one_clear_error(tmp_path, log_dir, change, words):
    labels = _labels(tmp_path, log_dir, **({change["drop"]: None} if "drop" in change else {}),
                     **change.get("labels", {}))
    if "ids" in change:
        frame = pd.read_csv(labels)
        frame["id"] = [f"x{i}" for i in range(len(frame))] if change["ids"] == "other" else "r1"
        frame.to_csv(labels, index=False)
    job = LogEvaluationJob(str(log_dir), labels, tmp_path / "out", join_on=change.get("join_on", "id"),
                           task=change.get("task"))
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        run_log_evaluation(job)
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are checked"


def test_a_file_that_is_not_a_log_is_named_with_its_line(tmp_path, log_dir):
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    (copy / "stray.jsonl").write_text('{"id": "a", "timestamp": "2026-11-30T00:00:00Z", "tasks": {}}\nid,label\n')
    with pytest.raises(UsageError, match=r"stray.jsonl line 2 is not a prediction log entry"):
        run_log_evaluation(LogEvaluationJob(str(copy), _labels(tmp_path, copy), tmp_path / "out"))


def test_a_log_is_a_file_a_directory_or_a_glob(tmp_path, log_dir):
    assert len(log_files(log_dir)) == 3
    assert log_files(log_dir / "predictions-1.jsonl") == [log_dir / "predictions-1.jsonl"]
    assert [p.name for p in log_files(f"{log_dir}/predictions-0*.jsonl")] == [
        "predictions-0-20261201T000000000000Z.jsonl", "predictions-0.jsonl"]
    for missing, words in ((tmp_path / "nowhere", "no prediction log at"), (f"{tmp_path}/*.jsonl", "no file matches"),
                           (tmp_path, "no prediction log files")):
        with pytest.raises(UsageError, match=words):
            log_files(missing)


def test_windows_are_utc_days_and_iso_weeks():
    assert window_of("2026-11-29T23:59:59.999Z", "day") == ("2026-11-29", "2026-11-29")
    assert window_of("2026-11-29T23:30:00-01:00", "day") == ("2026-11-30", "2026-11-30")
    assert window_of("2026-11-29T10:00:00Z", "week") == ("2026-W48", "2026-11-23")
    assert window_of("2027-01-01T10:00:00Z", "week") == ("2026-W53", "2026-12-28")


def test_the_command_prints_the_windows_and_a_mistake_in_one_line(tmp_path, log_dir, capsys):
    labels = _labels(tmp_path, log_dir)
    assert main(["evaluate", "--predictions", str(log_dir), "--labels", str(labels), "--out",
                 str(tmp_path / "out"), "--window", "week"]) == 0
    out = capsys.readouterr().out
    assert "2026-W49   abuse" in out and "100 of 102 labelled ids found in 120 logged records" in out
    assert main(["evaluate", "--predictions", str(log_dir), "--labels", str(labels), "--out",
                 str(tmp_path / "out"), "--join-on", "order"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tce evaluate: error: the labels file") and "'order'" in err[0]
    assert main(["evaluate", "--input", str(labels), "--out", str(tmp_path / "o"), "--window", "day"]) == 2
    assert "--join-on and --window go with --labels" in capsys.readouterr().err
