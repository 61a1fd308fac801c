"""tce.lib.progress (plain lines off a terminal) and tce demo-data's records."""
from __future__ import annotations

import io

import pytest

from tce.lib.demo_data import PREVIOUS_SCORE, demo_records
from tce.lib.progress import Progress
from tce_backends.errors import UsageError


def test_progress_prints_a_line_per_interval_and_one_at_the_end():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(total=300, label="predict", stream=stream, interval_s=10, clock=lambda: now[0])
    progress.skip(100)           # found already scored by an earlier run
    now[0] = 5.0
    progress.update(50)
    assert stream.getvalue() == ""
    now[0] = 10.0
    progress.update(50)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["predict: 200/300 records (67%), 10.0 records/s"] * 2


def test_demo_records_follow_the_demo_schema_and_the_label_rules():
    plain = demo_records(50, seed=3)
    assert "events" not in plain and "label_abuse" not in plain and "record_id" in plain
    labelled = demo_records(50, seed=3, labels=True, kind="trimodal")
    assert {"events", "label_abuse", "label_reason", PREVIOUS_SCORE} <= set(labelled.columns)
    assert set(labelled["label_abuse"]) <= {"legit", "abusive"}
    assert labelled[PREVIOUS_SCORE].between(0, 1).all()
    assert demo_records(50, seed=3)["dialogue"].tolist() == plain["dialogue"].tolist()  # seeded
    with pytest.raises(UsageError, match="--rows must be >= 1"):
        demo_records(0)
