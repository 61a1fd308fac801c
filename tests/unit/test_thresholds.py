"""Choosing decision thresholds (tce.lib.thresholds, tce calibrate thresholds): the search
against a brute-force search over every threshold on a fixed small file, what cannot be
reached or parsed, the report's intervals, the bundle written, a re-fit keeping the policy,
and tce evaluate measuring the decisions beside the fixed thresholds."""
from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tce.cli import main
from tce.jobs.calibrate import apply, fit
from tce.jobs.evaluate import EvaluateJob, evaluate_frame, run_evaluate
from tce.jobs.thresholds import choose
from tce.lib.thresholds import choose_policy, parse_target
from tce_backends.bundle import Bundle
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec

ABUSE = TaskSpec("abuse", "binary", ("legit", "abusive"))
REASON = TaskSpec("reason", "multiclass", ("none", "item_not_received", "payment_fraud", "harassment"))
ROWS = 60


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> pd.DataFrame:
    """A fixed small labelled file of calibrated scores, scores rounded to 2 digits so that
    records share scores (ties must take one decision)."""
    rng = np.random.default_rng(27)
    abuse = (rng.random(ROWS) < 0.35).astype(int)
    p = np.round(np.clip(0.25 + 0.4 * abuse + rng.normal(0, 0.2, ROWS), 0, 1), 2)
    reason = rng.integers(0, 4, ROWS)
    logits = rng.normal(0, 1, (ROWS, 4)) + 1.5 * np.eye(4)[reason]
    probabilities = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    frame = pd.DataFrame({"abuse": p, "label_abuse": abuse, "label_reason": reason})
    for i in range(4):
        frame[f"reason_{i}"] = probabilities[:, i]
    path = tmp_path_factory.mktemp("small") / "small.csv"
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def _binary(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    p = frame["abuse"].to_numpy()
    return np.stack([1 - p, p], axis=1), frame["label_abuse"].to_numpy()


def _multiclass(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame[[f"reason_{i}" for i in range(4)]].to_numpy(), frame["label_reason"].to_numpy()


def _candidates(scores: np.ndarray) -> list[float]:
    """Every threshold worth trying: each distinct score, and one above them all."""
    return [*sorted(set(np.float32(scores).tolist())), 1.01]


def _decide(task: TaskSpec, policy, scores: np.ndarray) -> np.ndarray:
    return policy.decider(task).decide(scores)


@pytest.mark.parametrize("spec", ["precision>=0.8", "precision>=0.6", "recall>=0.9", "recall>=0.5"])
def test_one_binary_threshold_is_the_brute_force_one(small_file, spec):
    scores, truth = _binary(small_file)
    (condition,) = parse_target(f"abuse={spec}")[1].conditions
    p = np.float32(scores[:, 1])
    best = None  # precision: the most records flagged; recall: the fewest, meeting the target
    for t in _candidates(scores[:, 1]):
        flagged = p >= np.float32(t)
        if not flagged.any():
            continue
        value = truth[flagged].mean() if condition.metric == "precision" else truth[flagged].sum() / truth.sum()
        if value >= condition.value and (best is None or (flagged.sum() > best.sum()) == (
                condition.metric == "precision") and flagged.sum() != best.sum()):
            best = flagged
    choice = choose_policy(ABUSE, scores, truth, parse_target(f"abuse={spec}")[1], samples=0)
    assert (_decide(ABUSE, choice.policy, scores) == 1).tolist() == best.tolist()
    assert choice.policy.actions == ("legit", "abusive")


def test_a_review_band_is_the_brute_force_pair(small_file):
    scores, truth = _binary(small_file)
    target = parse_target("abuse=allow,review:recall>=0.9,block:precision>=0.75")[1]
    choice = choose_policy(ABUSE, scores, truth, target, samples=0)
    decided = _decide(ABUSE, choice.policy, scores)
    p = np.float32(scores[:, 1])
    for level, (metric, value) in ((1, ("recall", 0.9)), (2, ("precision", 0.75))):
        flagged = decided >= level
        options = [p >= np.float32(t) for t in _candidates(scores[:, 1])]
        meets = [f for f in options if f.any() and (truth[f].mean() if metric == "precision"
                                                     else truth[f].sum() / truth.sum()) >= value]
        wanted = max(meets, key=lambda f: f.sum()) if metric == "precision" else min(meets, key=lambda f: f.sum())
        assert flagged.tolist() == wanted.tolist(), level
    assert choice.policy.actions == ("allow", "review", "block")
    assert [a.target for a in choice.measured.actions] == ["", "review:recall>=0.9", "block:precision>=0.75"]


def test_a_cost_matrix_gets_the_brute_force_minimum(small_file):
    scores, truth = _binary(small_file)
    cost = np.array([[0, 5], [1, 1], [4, 0]], dtype=float)  # allow, review, block by true class
    target = parse_target("abuse=cost:allow=0/5,review=1/1,block=4/0")[1]
    choice = choose_policy(ABUSE, scores, truth, target, samples=0)
    p = np.float32(scores[:, 1])
    brute = min(cost[(p >= np.float32(low)).astype(int) + (p >= np.float32(high)).astype(int), truth].sum()
                for low, high in itertools.combinations_with_replacement(_candidates(scores[:, 1]), 2))
    decided = _decide(ABUSE, choice.policy, scores)
    kept = [["allow", "review", "block"].index(a) for a in choice.policy.actions]
    assert cost[np.array(kept)[decided], truth].sum() == pytest.approx(brute)
    assert choice.measured.mean_cost.value == pytest.approx(brute / ROWS)


@pytest.mark.parametrize("spec", ["precision>=0.6", "harassment:recall>=0.5,unsure", "cost:abstain=0.4"])
def test_multiclass_minimums_are_the_brute_force_ones(small_file, spec):
    scores, truth = _multiclass(small_file)
    target = parse_target(f"reason={spec}")[1]
    choice = choose_policy(REASON, scores, truth, target, samples=0)
    served = np.float32(scores)
    top, best = served.argmax(axis=1), served.max(axis=1)
    decided = _decide(REASON, choice.policy, scores)
    for klass in range(4):
        mine = top == klass
        options = [mine & (best >= np.float32(m)) for m in [0.0, *_candidates(best[mine])]]
        if spec.startswith("cost"):
            def cost(f: np.ndarray, klass: int = klass, mine: np.ndarray = mine) -> float:
                return float((truth[f] != klass).sum() + 0.4 * (mine & ~f).sum())
            assert cost(decided == klass) == pytest.approx(min(cost(f) for f in options)), klass
            continue
        condition = next((c for c in target.conditions if c.action in (None, REASON.classes[klass])), None)
        if condition is None:
            assert (decided == klass).tolist() == mine.tolist()  # no minimum: every record it tops
            continue
        measured = [(f, truth[f].tolist().count(klass) / f.sum() if condition.metric == "precision"
                     else (truth[f] == klass).sum() / (truth == klass).sum()) for f in options if f.any()]
        meets = [f for f, value in measured if value >= condition.value]
        wanted = max(meets, key=lambda f: f.sum()) if condition.metric == "precision" \
            else min(meets, key=lambda f: f.sum())
        assert (decided == klass).tolist() == wanted.tolist(), klass
    assert choice.policy.abstain == ("unsure" if "unsure" in spec else "abstain")


def test_an_unreachable_target_is_one_line_saying_how_far_it_got(small_file):
    p = np.array([0.9, 0.9, 0.5, 0.1])  # the top score is one record of each class
    with pytest.raises(UsageError, match=r"^task 'abuse': precision>=0.9 cannot be reached on this file: the "
                                         r"highest precision at any threshold is 0\.667 \(at or above 0\.5, 3 "
                                         r"records\)$"):
        choose_policy(ABUSE, np.stack([1 - p, p], axis=1), np.array([0, 1, 1, 0]),
                      parse_target("abuse=precision>=0.9")[1], samples=0)
    scores, truth = _binary(small_file)
    with pytest.raises(UsageError, match="task 'abuse': block and review take the same threshold"):
        choose_policy(ABUSE, scores, truth, parse_target("abuse=review:recall>=0.9,block:recall>=0.9")[1], samples=0)


@pytest.mark.parametrize(("text", "message"), [
    ("abuse", "--target takes TASK=SPEC"),
    ("abuse=precision>0.9", "'precision>0.9' is not [ACTION:]precision>=P"),
    ("abuse=accuracy>=0.9", "unknown metric 'accuracy'"),
    ("abuse=precision>=1.5", "precision>=1.5 must be a probability in (0, 1]"),
    ("abuse=precision>=x", "precision: 'x' is not a number"),
    ("abuse=allow,pass,precision>=0.9", "one bare action name at most"),
    ("abuse=cost:allow=0/x", "cost of 'allow': 'x' is not a number"),
    ("abuse=cost:allow", "cost entries are ACTION=COST/COST/..."),
])
def test_a_target_that_does_not_parse_says_what_is_wrong(text, message):
    with pytest.raises(UsageError) as refused:
        parse_target(text)
    assert message in str(refused.value)


def test_the_intervals_are_seeded_and_hold_the_point(small_file):
    scores, truth = _binary(small_file)
    target = parse_target("abuse=allow,review:recall>=0.9,block:precision>=0.75")[1]
    first, again, other = (choose_policy(ABUSE, scores, truth, target, samples=100, seed=s) for s in (1, 1, 2))
    assert first.measured == again.measured and first.measured != other.measured
    for report in first.measured.actions:
        for interval in filter(None, (report.volume, report.precision, report.recall)):
            assert interval.low <= interval.value <= interval.high


# -- the job and the command, on a bundle ----------------------------------------------------

@pytest.fixture()
def bundle_copy(bimodal_bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, root)
    return root


@pytest.fixture()
def split(tmp_path):
    """A labelled predictions file of the demo's two tasks (raw scores, as tce calibrate fit reads)."""
    rng = np.random.default_rng(8)
    abuse, reason = (rng.random(300) < 0.3).astype(int), rng.integers(0, 4, 300)
    p = np.clip(0.3 + 0.4 * abuse + rng.normal(0, 0.15, 300), 0.001, 0.999)
    logits = rng.normal(0, 1, (300, 4)) + 2.0 * np.eye(4)[reason]
    raw = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"abuse_prob_class_0": 1 - p, "abuse_prob_class_1": p, "label_abuse": abuse,
                          **{f"reason_prob_class_{i}": raw[:, i] for i in range(4)}, "label_reason": reason})
    frame.to_csv(tmp_path / "split.csv", index=False)
    return tmp_path / "split.csv"


def test_thresholds_write_the_policy_and_a_refit_keeps_it(bundle_copy, split):
    choose(bundle_copy, split, ["reason=precision>=0.6"], samples=0)
    result = choose(bundle_copy, split, ["abuse=allow,review:recall>=0.8,block:recall>=0.3"], samples=0)
    assert result.written and result.choices[0].policy.actions == ("allow", "review", "block")
    bundle = Bundle.load(bundle_copy)
    assert bundle.calibrator.version == result.calibrator.version
    assert bundle.calibrator.policy.tasks["abuse"] == result.choices[0].policy
    assert "reason" in bundle.calibrator.policy.tasks  # a task not named keeps its policy
    refit = fit(bundle_copy, split, method="sigmoid", points=50)
    assert refit.policy == bundle.calibrator.policy == Bundle.load(bundle_copy).calibrator.policy


def test_the_command_refuses_an_unknown_task_and_an_unreachable_target_in_one_line(bundle_copy, split, capsys):
    for target, message in (("spam=precision>=0.9", "--target names unknown task(s) ['spam']"),
                            ("reason=none:recall>=1", "task 'reason': none:recall>=1 cannot be reached on this "
                                                      "file: the highest recall of any minimum is 0.")):
        code = main(["calibrate", "thresholds", "--bundle", str(bundle_copy), "--predictions", str(split),
                     "--target", target])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_reports_the_decisions_beside_the_fixed_thresholds(bundle_copy, split, tmp_path):
    assert main(["calibrate", "policy", "--bundle", str(bundle_copy), "--set", "abuse=allow<0.3<=review<0.6<=block",
                 "--set", "reason=argmax,harassment>=0.7"]) == 0
    bundle = Bundle.load(bundle_copy)
    frame = pd.read_csv(split)
    raw = np.concatenate([frame[[f"{t.name}_prob_class_{i}" for i in range(t.num_classes)]].to_numpy()
                          for t in bundle.manifest.tasks], axis=1)
    applied = bundle.calibrator.apply(raw)
    for task in bundle.manifest.tasks:
        for i in range(task.num_classes):
            frame[f"{task.name}_calibrated_prob_class_{i}"] = applied.calibrated[task.name][:, i]
    job = EvaluateJob(tmp_path / "eval", predictions=split, bundle=bundle_copy, bootstrap_samples=20, task="abuse")
    labels = {t.name: f"label_{t.name}" for t in bundle.manifest.tasks}
    (from_policy, _), _ = evaluate_frame(job, frame, bundle.manifest.tasks, labels)
    actions = np.array(bundle.calibrator.actions["abuse"], dtype=object)
    frame["abuse_decision"] = actions[applied.decisions["abuse"]]  # as tce predict writes it
    frame.to_csv(tmp_path / "scored.csv", index=False)
    run_evaluate(EvaluateJob(tmp_path / "eval", predictions=tmp_path / "scored.csv", bundle=bundle_copy,
                             bootstrap_samples=20, task="abuse"), note=lambda *_: None)
    from_column = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tasks"]["abuse"]
    assert from_policy.decisions["source"].startswith("the bundle's decision policy")
    assert from_column["decisions"]["source"] == "the abuse_decision column"
    assert from_policy.decisions["actions"] == from_column["decisions"]["actions"]
    assert [a["threshold"] for a in from_column["decisions"]["actions"]] == [None, 0.3, 0.6]
    assert "precision_at_0.5" in from_column["calibrated"]  # the fixed thresholds stay
    counts = dict(zip(*np.unique(frame["abuse_decision"], return_counts=True), strict=True))
    assert {a["action"]: a["records"] for a in from_column["decisions"]["actions"]} == \
        {a: int(counts.get(a, 0)) for a in actions}
    summary = (tmp_path / "eval" / "metrics_summary.txt").read_text()
    assert "decisions (the abuse_decision column" in summary and "review" in summary
    assert "decision" not in (tmp_path / "eval" / "metrics" / "metrics.json").read_text()  # seed 002's as it was


def test_calibrate_apply_writes_the_policys_decisions_over_stale_ones(bundle_copy, split, tmp_path):
    assert main(["calibrate", "policy", "--bundle", str(bundle_copy), "--set", "abuse=allow<0.4<=block"]) == 0
    frame = pd.read_csv(split).assign(reason_decision="stale")  # served by an earlier calibration
    frame.to_csv(tmp_path / "served.csv", index=False)
    out, notes = apply(bundle_copy, tmp_path / "served.csv", tmp_path / "applied.csv")
    calibrated = out["abuse_calibrated_prob_class_1"].to_numpy()
    assert out["abuse_decision"].tolist() == np.where(np.float32(calibrated) >= np.float32(0.4), "block",
                                                      "allow").tolist()
    labels = np.array(["none", "item_not_received", "payment_fraud", "harassment"])
    raw = out[[f"reason_prob_class_{i}" for i in range(4)]].to_numpy()
    assert out["reason_decision"].tolist() == labels[raw.argmax(axis=1)].tolist()  # no policy: the label
    assert any("reason_decision" in note for note in notes)
