"""tce evaluate on scored files: metrics against scikit-learn, the comparison's tests,
the plots and the mistakes a user makes."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from tce.jobs.evaluate import EvaluateJob, run_evaluate
from tce.lib.evaluation_metrics import binary_metrics, compare, delong_test
from tce_backends.errors import UsageError

ROWS = 400


def _scored_file(path, seed: int = 0) -> pd.DataFrame:
    """A fixed two-task predictions file: binary ``abuse`` and four-class ``reason``,
    raw and calibrated, labels as class indices, and a weaker previous abuse score."""
    rng = np.random.default_rng(seed)
    abuse = (rng.random(ROWS) < 0.3).astype(int)
    reason = rng.integers(0, 4, ROWS)
    frame = pd.DataFrame({"record_id": [f"r{i}" for i in range(ROWS)], "label_abuse": abuse, "label_reason": reason})
    p1 = np.clip(0.3 + 0.35 * (abuse - 0.3) + rng.normal(0, 0.18, ROWS), 0.001, 0.999)
    frame["abuse_prob_class_0"], frame["abuse_calibrated_prob_class_0"] = 1 - p1, 1 - p1 ** 1.3
    frame["abuse_prob_class_1"], frame["abuse_calibrated_prob_class_1"] = p1, p1 ** 1.3
    logits = rng.normal(0, 1, (ROWS, 4)) + 2.0 * np.eye(4)[reason]
    raw = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    calibrated = np.round(raw * 0.9 + 0.02, 3)  # rows no longer sum to 1, as with per-class tables
    for i in range(4):
        frame[f"reason_prob_class_{i}"], frame[f"reason_calibrated_prob_class_{i}"] = raw[:, i], calibrated[:, i]
    frame["previous_abuse_score"] = np.clip(0.3 + 0.1 * (abuse - 0.3) + rng.normal(0, 0.18, ROWS), 0, 1)
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("scored")  # one evaluation (plots included) for every test reading it
    frame = _scored_file(tmp_path / "scored.csv")
    report = run_evaluate(EvaluateJob(tmp_path / "eval", predictions=tmp_path / "scored.csv",
                                      previous_score_field="previous_abuse_score", compare_task="abuse",
                                      bootstrap_samples=50))
    return frame, report, json.loads((tmp_path / "eval" / "metrics.json").read_text()), tmp_path / "eval"


def test_binary_metrics_agree_with_scikit_learn(scored):
    frame, _, metrics, _ = scored
    y = frame["label_abuse"].to_numpy()
    for kind, column in (("raw", "abuse_prob_class_1"), ("calibrated", "abuse_calibrated_prob_class_1")):
        got, p = metrics["tasks"]["abuse"][kind], frame[column].to_numpy()
        expected = {"auroc": sk.roc_auc_score(y, p), "average_precision": sk.average_precision_score(y, p),
                    "log_loss": sk.log_loss(y, p), "brier": sk.brier_score_loss(y, p),
                    "f1_score": sk.f1_score(y, p >= 0.5)}
        for t in (0.3, 0.5, 0.7):
            expected[f"f1_score_at_{t}"] = sk.f1_score(y, p >= t)
            expected[f"precision_at_{t}"] = sk.precision_score(y, p >= t)
            expected[f"recall_at_{t}"] = sk.recall_score(y, p >= t)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (kind, name)


def test_multiclass_metrics_agree_with_scikit_learn(scored):
    frame, _, metrics, _ = scored
    y = frame["label_reason"].to_numpy()
    for kind, infix in (("raw", ""), ("calibrated", "calibrated_")):
        got = metrics["tasks"]["reason"][kind]
        p = frame[[f"reason_{infix}prob_class_{i}" for i in range(4)]].to_numpy()
        distribution = p / p.sum(axis=1, keepdims=True)
        predicted = p.argmax(axis=1)
        expected = {"auroc": sk.roc_auc_score(y, distribution, multi_class="ovr"),
                    "log_loss": sk.log_loss(y, distribution),
                    "f1_score_macro": sk.f1_score(y, predicted, average="macro"),
                    "f1_score_micro": sk.f1_score(y, predicted, average="micro"),
                    "accuracy": sk.accuracy_score(y, predicted)}
        for i in range(4):
            expected[f"auroc_class_{i}"] = sk.roc_auc_score(y == i, p[:, i])
            expected[f"f1_score_class_{i}"] = sk.f1_score(y == i, p[:, i] > 0.5)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (kind, name)
        assert 0 <= got["ece"] <= got["mce"] <= 1


def test_outputs_plots_and_markers(scored):
    _, report, metrics, out = scored
    assert metrics["records"] == ROWS and metrics["comparison"]["task"] == "abuse"
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "metrics_summary.txt", "eval_predictions.csv", "_SUCCESS", "_HEALTH"} <= names
    for task in ("abuse", "reason"):
        for plot in ("roc", "pr", "score_distribution", "reliability"):
            png = out / f"{plot}_{task}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, png
    assert (out / "comparison_scatter_abuse.png").stat().st_size > 10_000
    summary = (out / "metrics_summary.txt").read_text()
    assert "DeLong" in summary and "task reason (multiclass" in summary and summary == report.summary


def _planted(rows: int, strength_new: float, strength_previous: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.4).astype(int)

    def model(strength: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(strength * (y - 0.4) + rng.normal(0, 1, rows))))
    return y, model(strength_new), model(strength_previous)


def test_the_comparison_detects_a_planted_better_model():
    y, new, previous = _planted(1500, 3.0, 1.0)
    result = compare(y, new, new, previous, bootstrap_samples=100)
    assert result["delta_raw"]["auroc"] > 0.1
    assert result["delong"]["p_value"] < 1e-6 and result["delong"]["z"] > 0
    low, high = result["bootstrap"]["auroc_delta_ci"]
    assert 0 < low < result["delta_raw"]["auroc"] < high
    worse = compare(y, previous, previous, new, bootstrap_samples=20)
    assert worse["delta_raw"]["auroc"] < 0 and worse["delong"]["z"] < 0


def test_two_equally_good_models_are_not_called_different():
    y, new, _ = _planted(1500, 2.0, 2.0, seed=4)
    assert delong_test(y, new, new).p_value == 1.0
    y, a, b = _planted(1500, 2.0, 2.0, seed=5)
    assert delong_test(y, a, b).p_value > 0.01


def test_delong_matches_the_definition_on_a_small_sample_with_ties():
    rng = np.random.default_rng(6)
    y = np.array([0, 1] * 30)
    a, b = np.round(rng.random(60) + 0.3 * y, 1), np.round(rng.random(60) + 0.1 * y, 1)  # many ties
    result = delong_test(y, a, b)
    assert result.auroc_new == pytest.approx(sk.roc_auc_score(y, a), abs=1e-12)

    def placements(score):  # DeLong's V10 and V01 by their definition, O(m n)
        x, z = score[y == 1], score[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)
    (va, wa), (vb, wb) = placements(a), placements(b)
    s10, s01 = np.cov(np.stack([va, vb])) / len(va), np.cov(np.stack([wa, wb])) / len(wa)
    variance = s10[0, 0] + s10[1, 1] - 2 * s10[0, 1] + s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]
    assert result.z == pytest.approx((result.auroc_new - result.auroc_previous) / math.sqrt(variance), rel=1e-9)


def test_undefined_metrics_are_null_not_errors():
    metrics = binary_metrics(np.zeros(20, dtype=int), np.linspace(0, 1, 20))
    assert math.isnan(metrics["auroc"]) and metrics["precision_at_0.5"] == 0.0


def test_mistakes_are_named(tmp_path):
    frame = _scored_file(tmp_path / "scored.csv")
    frame.drop(columns=["abuse_calibrated_prob_class_1"]).to_csv(tmp_path / "uncalibrated.csv", index=False)
    with pytest.raises(UsageError, match="lack the calibrated columns .* 'tce calibrate apply'"):
        run_evaluate(EvaluateJob(tmp_path / "a", predictions=tmp_path / "uncalibrated.csv"))
    frame.assign(label_abuse=frame["label_abuse"].where(frame.index > 4)).to_csv(tmp_path / "gaps.csv", index=False)
    with pytest.raises(UsageError, match="'label_abuse' is empty in 5 of 400 rows"):
        run_evaluate(EvaluateJob(tmp_path / "b", predictions=tmp_path / "gaps.csv"))
    with pytest.raises(UsageError, match="add --compare-task|binary task"):
        run_evaluate(EvaluateJob(tmp_path / "c", predictions=tmp_path / "scored.csv",
                                 previous_score_field="previous_abuse_score", compare_task="reason"))
    frame.assign(previous_abuse_score=frame["previous_abuse_score"] * 3).to_csv(tmp_path / "big.csv", index=False)
    with pytest.raises(UsageError, match="probability in \\[0, 1\\] in every row"):
        run_evaluate(EvaluateJob(tmp_path / "d", predictions=tmp_path / "big.csv",
                                 previous_score_field="previous_abuse_score"))
    with pytest.raises(UsageError, match="--label names unknown tasks \\['abuze'\\]"):
        run_evaluate(EvaluateJob(tmp_path / "e", predictions=tmp_path / "scored.csv", labels={"abuze": "x"}))
    frame.assign(label_abuse=frame["label_abuse"].map({0: "legit", 1: "abusive"})).to_csv(tmp_path / "names.csv",
                                                                                          index=False)
    with pytest.raises(UsageError, match="'label_abuse' holds class names: add --bundle"):
        run_evaluate(EvaluateJob(tmp_path / "f", predictions=tmp_path / "names.csv"))
    for out in ("a", "b", "c", "d", "e", "f"):
        assert not (tmp_path / out / "_SUCCESS").exists()
