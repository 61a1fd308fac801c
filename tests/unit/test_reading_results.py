"""What a reader sees in the plots and reports: panels that say which class they show,
reliability points that show how many records stand behind them, benchmark targets marked
MET or MISSED, and benchmark rows named after what they measure."""
from __future__ import annotations

import numpy as np

from tce.jobs.benchmark import target_lines
from tce.lib.plots import TaskScores, panel_title, reliability_diagram, sparse_bins


def test_every_multiclass_score_panel_has_its_own_title():
    scores = TaskScores("reason", ("none", "item_not_received", "payment_fraud", "harassment"),
                        np.array([0, 1, 2, 3]), {"raw": np.full((4, 4), 0.25)})
    titles = [panel_title(scores, i) for i in range(4)]
    assert len(set(titles)) == 4 and titles[2] == "scores of class payment_fraud: reason"
    binary = TaskScores("abuse", ("legit", "abusive"), np.array([0, 1]), {"raw": np.full((2, 2), 0.5)})
    assert panel_title(binary, 1) == "scores: abuse"


def test_thin_reliability_bins_are_marked_and_drawn_hollow(tmp_path):
    counts = np.array([0, 3, 500, 1200, 2, 40, 0, 900, 15, 300], dtype=float)
    assert sparse_bins(counts).tolist() == [False, True, False, False, True, False, False, False, True, False]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 3000)
    calibrated = np.clip(labels * 0.6 + rng.normal(0.2, 0.1, 3000), 0, 1)
    calibrated[:3] = 0.97  # three records alone in the top bin
    scores = TaskScores("abuse", ("legit", "abusive"), labels, {"calibrated": np.stack([1 - calibrated,
                                                                                        calibrated], axis=1)})
    path = reliability_diagram(scores, tmp_path / "reliability.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_benchmark_targets_say_met_or_missed():
    lines = target_lines({"served_vs_in_process_best": 0.97, "served_vs_fixed_padding_best": 1.1,
                          "added_p50_ms_at_concurrency_1": 2.5})
    assert lines[0].endswith("MET") and "target >= 0.95" in lines[0]
    assert lines[1].endswith("MISSED") and lines[2].endswith("MISSED") and "target <= 2 ms" in lines[2]


def test_the_steps_benchmark_names_what_it_measures(bimodal_bundle, capsys):
    from benchmarks import steps

    steps.main(["--bundle", str(bimodal_bundle.root), "--batch", "16"])
    printed = capsys.readouterr().out
    assert "text cleaning (dialogue_splitter, html_normalizer, emoji_remover, text_normalizer)" in printed
    assert "preprocessor TokenizerStep (dialogue: clean, chunk, tokenize)" in printed
    assert "preprocessor TabularStep (8 features" in printed
