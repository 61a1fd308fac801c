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
from tce.lib.seed_evaluation import ComparisonOptions
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
                                      bootstrap_samples=50), note=lambda *_: None)
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
    assert (out / "comparison_distributions_abuse.png").stat().st_size > 10_000
    summary = (out / "metrics_summary.txt").read_text()
    assert "McNemar at 0.5 (raw)" in summary and "paired t-test" in summary
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
    with pytest.raises(UsageError, match="the ID column 'order_id' \\(--id-field or ID_FIELD\\) is not a column"):
        run_evaluate(EvaluateJob(tmp_path / "g", predictions=tmp_path / "scored.csv", id_field="order_id"))
    with pytest.raises(UsageError, match="--task 'abuze' is not a task of this model; the tasks are \\['abuse', "):
        run_evaluate(EvaluateJob(tmp_path / "h", predictions=tmp_path / "scored.csv", task="abuze"))
    for out in ("a", "b", "c", "d", "e", "f", "g", "h"):
        assert not (tmp_path / out / "_SUCCESS").exists()


# -- seed 002: statistical tests, its own layout, raw-only predictions, its switches ----

def test_the_seed_statistical_tests_agree_with_scipy_called_directly():
    from scipy import stats

    y, new, previous = _planted(600, 2.5, 1.0, seed=8)
    result = compare(y, new, None, previous, bootstrap_samples=10)
    t, w = stats.ttest_rel(new, previous), stats.wilcoxon(new, previous)
    assert result["paired_t_test"]["statistic"] == pytest.approx(t.statistic, rel=1e-12)
    assert result["paired_t_test"]["p_value"] == pytest.approx(t.pvalue, rel=1e-9)
    assert result["wilcoxon"]["statistic"] == pytest.approx(w.statistic, rel=1e-12)
    assert result["wilcoxon"]["p_value"] == pytest.approx(w.pvalue, rel=1e-9)
    assert set(result["mcnemar"]) == {"0.3", "0.5", "0.7"}
    for threshold in (0.3, 0.5, 0.7):
        table = pd.crosstab((new >= threshold) == y, (previous >= threshold) == y)  # rows: new right?
        b, c = int(table.loc[True, False]), int(table.loc[False, True])
        chi2 = (abs(b - c) - 1) ** 2 / (b + c)
        got = result["mcnemar"][str(threshold)]
        assert (got["new_right_previous_wrong"], got["new_wrong_previous_right"]) == (b, c)
        assert got["statistic"] == pytest.approx(chi2, rel=1e-12)
        assert got["p_value"] == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-9)
        assert got["exact_p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert result["mcnemar"]["0.5"]["significant"] and result["mcnemar"]["0.5"]["new_right_previous_wrong"] > \
        result["mcnemar"]["0.5"]["new_wrong_previous_right"]
    assert result["delta_calibrated"] is None and result["agreement_scores"] == "raw"
    same = compare(y, new, None, new, bootstrap_samples=0)
    assert same["paired_t_test"]["p_value"] == same["wilcoxon"]["p_value"] == same["mcnemar"]["0.5"]["p_value"] == 1


def test_comparison_metrics_basic_and_no_statistical_tests_leave_them_out():
    y, new, previous = _planted(300, 2.0, 1.0, seed=9)
    basic = compare(y, new, new, previous, detail="basic", tests=False)
    assert {"previous", "delta_raw", "delta_calibrated", "pearson", "spearman"} == set(basic)
    full = compare(y, new, new, previous, bootstrap_samples=5)
    assert {"agreement_at_0.5", "score_distribution", "paired_t_test", "wilcoxon", "mcnemar", "delong",
            "bootstrap"} <= set(full)
    assert full["score_distribution"]["previous"]["median"] == pytest.approx(np.median(previous))


SEED_BINARY_KEYS = ["eval/auroc", "eval/average_precision", "eval/f1_score"] + [
    f"{name}_at_{t}" for t in (0.3, 0.5, 0.7) for name in ("f1_score", "precision", "recall")]


def _seed_001_file(path, rows: int = 300) -> pd.DataFrame:
    """Seed 001's output (ID and prob_class_<i>, raw only) with the seed's label column."""
    rng = np.random.default_rng(12)
    label = (rng.random(rows) < 0.35).astype(int)
    p1 = np.clip(0.35 + 0.3 * (label - 0.35) + rng.normal(0, 0.2, rows), 0, 1)
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(rows)], "prob_class_0": 1 - p1,
                          "prob_class_1": p1, "label": label,
                          "old_score": np.clip(p1 + rng.normal(0, 0.3, rows), 0, 1)})
    frame.to_csv(path, sep="\t", index=False)
    return frame


def test_seed_001_output_is_evaluated_raw_only_into_the_seed_layout(tmp_path):
    frame = _seed_001_file(tmp_path / "inference_predictions.tsv")
    report = run_evaluate(EvaluateJob(tmp_path / "out", predictions=tmp_path / "inference_predictions.tsv",
                                      id_field="customer_id", previous_score_field="old_score",
                                      comparison=ComparisonOptions("basic", statistical_tests=False, plots=False)),
                          note=lambda *_: None)
    out, y, p = tmp_path / "out", frame["label"].to_numpy(), frame["prob_class_1"].to_numpy()
    rich = json.loads((out / "metrics.json").read_text())
    assert rich["tasks"]["task"]["calibrated"] is None and rich["tasks"]["task"]["raw"]["auroc"] > 0.7
    assert "calibrated: absent" in report.summary and "paired_t_test" not in rich["comparison"]
    assert not (out / "comparison_scatter_task.png").exists()  # COMPARISON_PLOTS false
    text = (out / "metrics" / "metrics.json").read_text()
    seed_metrics = json.loads(text)
    assert list(seed_metrics)[:len(SEED_BINARY_KEYS)] == SEED_BINARY_KEYS
    assert text.startswith('{\n  "eval/auroc": ')  # the seed's json.dump(..., indent=2)
    expected = {"eval/auroc": sk.roc_auc_score(y, p), "eval/average_precision": sk.average_precision_score(y, p),
                "eval/f1_score": sk.f1_score(y, p >= 0.5)}
    for t in (0.3, 0.5, 0.7):
        expected |= {f"f1_score_at_{t}": sk.f1_score(y, p >= t), f"precision_at_{t}": sk.precision_score(y, p >= t),
                     f"recall_at_{t}": sk.recall_score(y, p >= t)}
    for name, value in expected.items():
        assert seed_metrics[name] == pytest.approx(value, abs=1e-12), name
    assert seed_metrics["comparison/delta_raw/auroc"] == pytest.approx(
        sk.roc_auc_score(y, p) - sk.roc_auc_score(y, frame["old_score"]), abs=1e-12)
    summary = (out / "metrics" / "metrics_summary.txt").read_text().splitlines()
    assert summary[:7] == ["PYTORCH MODEL EVALUATION METRICS", "=" * 50, "",
                           f"AUC-ROC:           {expected['eval/auroc']:.4f}",
                           f"Average Precision: {expected['eval/average_precision']:.4f}",
                           f"F1 Score:          {expected['eval/f1_score']:.4f}", ""]
    assert summary[7:11] == ["=" * 50, "", "ALL METRICS", "=" * 50]
    assert summary[11:] == [f"{k}: {v:.6f}" if isinstance(v, (int, float)) else f"{k}: {v}"
                            for k, v in sorted(seed_metrics.items())]
    predictions = pd.read_csv(out / "eval" / "eval_predictions.tsv", sep="\t")
    assert list(predictions.columns) == ["customer_id", "label", "prob_class_0", "prob_class_1"]
    assert predictions["prob_class_1"].to_numpy() == pytest.approx(p, abs=1e-12)
    for name in ("roc_curve.jpg", "pr_curve.jpg"):
        assert (out / "metrics" / name).read_bytes()[:3] == b"\xff\xd8\xff", name  # JPEG
    for folder in (out, out / "eval", out / "metrics"):
        assert (folder / "_SUCCESS").is_file() and (folder / "_HEALTH").read_text().startswith("healthy: ")


def test_several_tasks_prefix_the_seed_names_and_one_task_can_be_chosen(scored, tmp_path):
    frame, _, _, out = scored
    seed_metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    assert list(seed_metrics)[:len(SEED_BINARY_KEYS)] == [f"abuse_{k}" for k in SEED_BINARY_KEYS]
    assert seed_metrics["reason_auroc_class_2"] == pytest.approx(
        sk.roc_auc_score(frame["label_reason"] == 2, frame["reason_prob_class_2"]), abs=1e-12)
    assert seed_metrics["abuse_comparison/paired_t_test/p_value"] < 1
    summary = (out / "metrics" / "metrics_summary.txt").read_text()
    assert "\nabuse\nAUC-ROC:  " in summary and "\nreason\nAUC-ROC:  " in summary
    assert {"abuse_roc_curve.jpg", "reason_pr_curve.jpg"} <= {p.name for p in (out / "metrics").iterdir()}
    assert pd.read_csv(out / "eval" / "eval_predictions.csv").columns[:3].tolist() == \
        ["label_abuse", "label_reason", "abuse_prob_class_0"]

    # one task of the two, under the seed's one-task names; a class no record has is NaN, as the seed writes it
    frame.assign(label_reason=frame["label_reason"].where(frame["label_reason"] != 3, 0)).to_csv(
        tmp_path / "three.csv", index=False)
    run_evaluate(EvaluateJob(tmp_path / "reason", predictions=tmp_path / "three.csv", task="reason",
                             id_field="record_id"), note=lambda *_: None)
    text = (tmp_path / "reason" / "metrics" / "metrics.json").read_text()
    assert list(json.loads(text)) == ["eval/auroc", "eval/average_precision", "eval/f1_score"] + [
        f"{name}_class_{i}" for i in range(4) for name in ("auroc", "f1_score")]
    assert '"auroc_class_3": NaN' in text and '"eval/auroc": NaN' in text
    assert pd.read_csv(tmp_path / "reason" / "eval" / "eval_predictions.csv").columns.tolist() == \
        ["record_id", "label_reason"] + [f"prob_class_{i}" for i in range(4)]
    assert "auroc_class_3: nan" in (tmp_path / "reason" / "metrics" / "metrics_summary.txt").read_text()


def test_the_seed_comparison_switches_and_flags(monkeypatch):
    from tce.lib.seed_evaluation import ComparisonFlags, comparison_switches

    seed_env = {"COMPARISON_MODE": "true", "PREVIOUS_SCORE_FIELD": "old"}
    assert comparison_switches(ComparisonFlags(), seed_env) == ("old", ComparisonOptions())
    assert comparison_switches(ComparisonFlags(), {"PREVIOUS_SCORE_FIELD": "old"})[0] is None  # mode off by default
    assert comparison_switches(ComparisonFlags(mode="false"), seed_env)[0] is None
    assert comparison_switches(ComparisonFlags("new"), {"COMPARISON_MODE": "false"})[0] == "new"
    assert comparison_switches(ComparisonFlags("new", mode="false"), {})[0] is None
    quiet = {**seed_env, "COMPARISON_METRICS": "basic", "STATISTICAL_TESTS": "False", "COMPARISON_PLOTS": "false"}
    assert comparison_switches(ComparisonFlags(), quiet)[1] == ComparisonOptions("basic", False, False)
    loud = ComparisonFlags(detail="all", statistical_tests="true", plots="true")
    assert comparison_switches(loud, quiet)[1] == ComparisonOptions()
    for env, words in (({"COMPARISON_MODE": "yes"}, "COMPARISON_MODE must be true or false, got 'yes'"),
                       ({"COMPARISON_MODE": "true"}, "set PREVIOUS_SCORE_FIELD or give --previous-score-field"),
                       ({"COMPARISON_METRICS": "some"}, "COMPARISON_METRICS must be one of basic, all")):
        with pytest.raises(UsageError, match=words):
            comparison_switches(ComparisonFlags(), env)


def test_the_command_reads_the_seed_variables_and_a_flag_wins(tmp_path, monkeypatch, capsys):
    from tce.cli import main

    _seed_001_file(tmp_path / "seed.tsv", rows=120)
    monkeypatch.setenv("COMPARISON_MODE", "true")
    monkeypatch.setenv("PREVIOUS_SCORE_FIELD", "old_score")
    monkeypatch.setenv("STATISTICAL_TESTS", "false")
    args = ["evaluate", "--predictions", str(tmp_path / "seed.tsv"), "--bootstrap-samples", "5"]
    assert main([*args, "--out", str(tmp_path / "a"), "--comparison-plots", "false"]) == 0
    comparison = json.loads((tmp_path / "a" / "metrics.json").read_text())["comparison"]
    assert comparison["previous_score_field"] == "old_score" and "wilcoxon" not in comparison
    assert main([*args, "--out", str(tmp_path / "b"), "--statistical-tests", "true", "--comparison-plots",
                 "false"]) == 0
    assert "wilcoxon" in json.loads((tmp_path / "b" / "metrics.json").read_text())["comparison"]
    monkeypatch.setenv("COMPARISON_PLOTS", "maybe")
    assert main([*args, "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == "tce evaluate: error: COMPARISON_PLOTS must be true or false, got 'maybe'"
