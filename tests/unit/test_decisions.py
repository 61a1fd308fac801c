"""Decision policies (tce_backends.decisions): what each policy decides, the calibrator's
decision output, the policy as part of the calibration version, and bad policies refused with
one line naming the task and field, by a bundle and the command line (the served step decides
by the labels instead, visibly: its version is "unavailable@...")."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tce.cli import main
from tce.lib.staging import tree_digest
from tce_backends import contract
from tce_backends.bundle import Bundle, Manifest
from tce_backends.calibration import Calibrator, LookupTable, TaskCalibration
from tce_backends.decisions import POLICY_FILE, ArgmaxPolicy, DecisionPolicy, ThresholdPolicy
from tce_backends.errors import BundleError
from tce_backends.steps import CalibratorStep
from tce_backends.tasks import TaskSpec

ABUSE = TaskSpec("abuse", "binary", ("legit", "abusive"))
REASON = TaskSpec("reason", "multiclass", ("none", "item_not_received", "payment_fraud", "harassment"))
TASKS = (ABUSE, REASON)
POLICY = DecisionPolicy({"abuse": ThresholdPolicy((0.5, 0.9), ("allow", "review", "block")),
                         "reason": ArgmaxPolicy({"harassment": 0.6}, "unsure")})
# Calibrated reason scores lower class 0 below the others: its argmax differs from the raw one.
HALVE_NONE = LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])


def _rows(abuse: list[float], reason: list[list[float]]) -> np.ndarray:
    p = np.asarray(abuse, dtype=np.float32)
    return np.concatenate([np.stack([1 - p, p], axis=1), np.asarray(reason, dtype=np.float32)], axis=1)


def test_a_binary_score_equal_to_a_threshold_takes_the_upper_action():
    calibrator = Calibrator(TASKS, {}, policy=POLICY)
    uniform = [[0.25] * 4] * 6
    batch = calibrator.apply(_rows([0.0, 0.4999, 0.5, 0.8999, 0.9, 1.0], uniform))
    actions = np.array(calibrator.actions["abuse"])[batch.decisions["abuse"]]
    assert actions.tolist() == ["allow", "allow", "review", "review", "block", "block"]


def test_thresholds_compare_as_the_float32_scores_served():
    """0.9 in a policy is float32(0.9): the served float32 score 0.9 equals it, one float32 step below does not."""
    decider = POLICY.tasks["abuse"].decider(ABUSE)
    at, below = np.float32(0.9), np.nextafter(np.float32(0.9), np.float32(0))
    scores = np.array([[1 - at, at], [1 - below, below]], dtype=np.float64)
    assert decider.decide(scores).tolist() == [2, 1]


def test_multiclass_decides_the_top_calibrated_class_or_abstains_below_its_minimum():
    calibrator = Calibrator(TASKS, {"reason": TaskCalibration.of("multiclass", {0: HALVE_NONE})}, policy=POLICY)
    raw = [[0.4, 0.3, 0.2, 0.1],    # raw argmax none; calibrated: none 0.2 of 0.8 -> item_not_received
           [0.1, 0.1, 0.1, 0.7],    # harassment 0.7 >= 0.6
           [0.1, 0.2, 0.2, 0.5]]    # harassment 0.5 < 0.6 -> unsure
    batch = calibrator.apply(_rows([0.1, 0.1, 0.1], raw))
    decided = np.array(calibrator.actions["reason"])[batch.decisions["reason"]].tolist()
    assert decided == ["item_not_received", "harassment", "unsure"]
    assert np.array(REASON.classes)[batch.labels["reason"]].tolist() == ["none", "harassment", "harassment"]


def test_a_task_without_a_policy_decides_its_label():
    calibrator = Calibrator(TASKS, {"reason": TaskCalibration.of("multiclass", {0: HALVE_NONE})})
    batch = calibrator.apply(_rows([0.7, 0.2], [[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]]))
    for task in TASKS:
        assert calibrator.actions[task.name] == task.classes
        assert batch.decisions[task.name].tolist() == batch.labels[task.name].tolist()


def test_the_step_returns_each_task_decision_as_text():
    step = CalibratorStep(Calibrator(TASKS, {}, policy=POLICY))
    specs = {spec.name: spec for spec in step._output_specs(TASKS)}
    assert specs["abuse_decision"] == contract.TensorSpec("abuse_decision", "TYPE_STRING", (1,))
    assert contract.decision_output_name("reason") in step.output_names
    out = step.run({contract.PROBABILITIES: _rows([0.95, 0.2], [[0.1, 0.1, 0.1, 0.7], [0.1, 0.2, 0.2, 0.5]])})
    assert out["abuse_decision"].tolist() == [[b"block"], [b"allow"]]
    assert out["reason_decision"].tolist() == [[b"harassment"], [b"unsure"]]


def test_the_policy_is_part_of_the_calibration_version(tmp_path):
    plain = Calibrator(TASKS, {})
    with_policy = Calibrator(TASKS, {}, policy=POLICY)
    other = Calibrator(TASKS, {}, policy=POLICY.with_tasks({"abuse": ThresholdPolicy((0.5,), ("allow", "block"))}))
    assert len({plain.version, with_policy.version, other.version}) == 3
    with_policy.save(tmp_path)
    path = tmp_path / POLICY_FILE
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))  # the same policy, spaced otherwise
    assert Calibrator.load(tmp_path, TASKS).version == with_policy.version
    plain.save(tmp_path)  # saving a calibration without a policy leaves none behind
    assert not path.exists() and Calibrator.load(tmp_path, TASKS).version == plain.version


BAD_POLICIES = [
    ({"abuse": {"thresholds": [0.9, 0.5], "actions": ["allow", "review", "block"]}},
     "task 'abuse': thresholds [0.9, 0.5] must increase strictly"),
    ({"abuse": {"thresholds": [0.5, 0.9], "actions": ["allow", "block"]}},
     "task 'abuse': actions: 2 threshold(s) need 3 actions, got 2"),
    ({"abuse": {"thresholds": [1.5], "actions": ["allow", "block"]}},
     "task 'abuse': threshold 1 must be a probability in [0, 1], got 1.5"),
    ({"reason": {"minimum": {"spam": 0.5}}}, "task 'reason': minimum for unknown class(es) ['spam']"),
    ({"reason": {"minimum": {"harassment": -0.1}}},
     "task 'reason': minimum of class 'harassment' must be a probability in [0, 1]"),
    ({"spam": {"minimum": {}}}, "policy for unknown task 'spam'"),
    ({"abuse": {"minimum": {}, "abstain": "unsure"}}, "task 'abuse': 'minimum' and 'abstain' decide a multiclass"),
    ({"abuse": {"thresholds": [0.5], "actions": ["allow", "block now"]}}, "task 'abuse': action 2 must be a name"),
]


@pytest.mark.parametrize(("tasks", "message"), BAD_POLICIES)
def test_a_bad_policy_is_refused_when_the_calibration_loads(tmp_path, tasks, message):
    (tmp_path / POLICY_FILE).write_text(json.dumps({"format": 1, "tasks": tasks}))
    with pytest.raises(BundleError) as refused:
        Calibrator.load(tmp_path, TASKS, strict=True)  # as a bundle loads (build, publish, release add)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"bundle part 'calibration/{POLICY_FILE}': ")
    # The served step (not strict) decides by the labels instead, and says so in every answer's version.
    served = Calibrator.load(tmp_path, TASKS)
    assert message in served.policy_problem and not served.policy
    assert served.version.startswith("unavailable@")
    batch = served.apply(_rows([0.7, 0.2], [[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]]))
    assert all(batch.decisions[t.name].tolist() == batch.labels[t.name].tolist() for t in TASKS)


def test_a_policy_file_that_is_not_a_policy_is_refused(tmp_path):
    for text in ("{not json", '{"tasks": {"abuse": {"thresholds": [NaN], "actions": ["a", "b"]}}}', "[]"):
        (tmp_path / POLICY_FILE).write_text(text)
        with pytest.raises(BundleError, match=f"calibration/{POLICY_FILE}"):
            Calibrator.load(tmp_path, TASKS, strict=True)
        assert Calibrator.load(tmp_path, TASKS).policy_problem


@pytest.fixture()
def bundle_copy(bimodal_bundle, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(bimodal_bundle.root, root)
    return root


def test_a_bundle_refuses_a_bad_policy_and_the_served_step_serves_labels_visibly(bundle_copy):
    (bundle_copy / "calibration" / POLICY_FILE).write_text(json.dumps(
        {"tasks": {"abuse": {"thresholds": [0.7, 0.2], "actions": ["a", "b", "c"]}}}))
    with pytest.raises(BundleError, match="task 'abuse': thresholds .* must increase"):
        Bundle.load(bundle_copy)
    step = CalibratorStep.load(bundle_copy, Manifest.load(bundle_copy))
    assert "must increase" in step.calibrator.policy_problem
    out = step.run({contract.PROBABILITIES: _rows([0.95], [[0.1, 0.1, 0.1, 0.7]])})
    assert out["abuse_decision"].tolist() == out["abuse_label"].tolist() == [[b"abusive"]]
    assert out[contract.CALIBRATION_VERSION][0, 0].startswith(b"unavailable@")


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("rule", "message"), [
    ("abuse=allow<0.9<=review<0.5<=block", "--set abuse: thresholds [0.9, 0.5] must increase strictly"),
    ("abuse=allow<1.2<=block", "--set abuse: threshold 1 must be a probability in [0, 1], got 1.2"),
    ("abuse=allow<=0.5<block", "--set abuse: 'allow<=0.5<block' is not ACTION<THRESHOLD<=ACTION"),
    ("reason=argmax,spam>=0.5", "task 'reason': minimum for unknown class(es) ['spam']"),
    ("reason=argmax,harassment>=2", "minimum of class 'harassment' must be a probability in [0, 1], got 2.0"),
    ("spam=argmax", "--set/--clear names unknown task(s) ['spam']"),
    ("abuse=argmax", "'minimum' and 'abstain' decide a multiclass task, 'abuse' is binary"),
])
def test_the_command_line_refuses_a_bad_policy_in_one_line_and_writes_nothing(bundle_copy, capsys, rule, message):
    before = tree_digest(bundle_copy)
    code, out, err = _cli(["calibrate", "policy", "--bundle", str(bundle_copy), "--set", rule], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert tree_digest(bundle_copy) == before


def test_the_command_line_sets_shows_and_clears_a_policy(bundle_copy, capsys):
    before = Bundle.load(bundle_copy).calibrator
    tables = {p.name: p.read_bytes() for p in (bundle_copy / "calibration").iterdir() if p.name != POLICY_FILE}
    code, out, _ = _cli(["calibrate", "policy", "--bundle", str(bundle_copy), "--set",
                         "abuse=allow<0.5<=review<0.9<=block", "--set", "reason=argmax,harassment>=0.6,unsure"],
                        capsys)
    assert code == 0 and "allow < 0.5 <= review < 0.9 <= block" in out
    after = Bundle.load(bundle_copy).calibrator
    assert after.policy == POLICY and after.version != before.version
    assert {p.name: p.read_bytes() for p in (bundle_copy / "calibration").iterdir() if p.name != POLICY_FILE} \
        == tables  # the tables (and whatever else the calibration holds) untouched
    code, out, _ = _cli(["calibrate", "policy", "--bundle", str(bundle_copy), "--clear", "abuse"], capsys)
    assert code == 0 and "abuse                no policy: decides its label" in out
    assert set(Bundle.load(bundle_copy).calibrator.policy.tasks) == {"reason"}


def test_clients_of_a_server_built_before_decisions_read_the_label_as_the_decision():
    from tce_client.results import output_column_names, predictions_from_outputs
    from tce_client.schema import EnsembleSchema, TaskInfo

    old = EnsembleSchema(("dialogue",), (), (), (), (TaskInfo("abuse", "binary", ("no", "yes"), {
        "raw": "abuse_raw", "calibrated": "abuse_calibrated", "label": "abuse_label"}),), {},
        {"calibration_version": "calibration_version", "calibration_fallback": "calibration_fallback"})
    outputs = {"abuse_raw": np.array([[0.2, 0.8]], np.float32), "abuse_calibrated": np.array([[0.4, 0.6]], np.float32),
               "abuse_label": np.array([[b"yes"]], dtype=object), "calibration_version": np.array([[b"v"]], object),
               "calibration_fallback": np.array([[False]])}
    assert old.output_names == ["abuse_raw", "abuse_calibrated", "abuse_label", "calibration_version",
                                "calibration_fallback"]
    (prediction,) = predictions_from_outputs(old, outputs)
    assert prediction["abuse"].decision == "yes"
    assert "abuse_decision" not in output_column_names(old)


def test_the_gateways_v1_answer_names_each_tasks_decision():
    import struct

    from tce_client.schema import EnsembleSchema, TaskInfo
    from tce_gateway.v1 import answer

    schema = EnsembleSchema(("dialogue",), (), (), (), (TaskInfo("abuse", "binary", ABUSE.classes, {
        "raw": "abuse_raw", "calibrated": "abuse_calibrated", "label": "abuse_label", "decision": "abuse_decision"}),),
        {}, {"calibration_version": "calibration_version", "calibration_fallback": "calibration_fallback"})
    text = lambda value: struct.pack("<I", len(value)) + value  # noqa: E731
    outputs = [("abuse_raw", "FP32", [1, 2], np.array([[0.2, 0.8]], "<f4").tobytes()),
               ("abuse_calibrated", "FP32", [1, 2], np.array([[0.3, 0.7]], "<f4").tobytes()),
               ("abuse_label", "BYTES", [1, 1], text(b"abusive")), ("abuse_decision", "BYTES", [1, 1], text(b"review")),
               ("calibration_version", "BYTES", [1, 1], text(b"v1")),
               ("calibration_fallback", "BOOL", [1, 1], np.array([[False]]).tobytes())]
    header = json.dumps({"outputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                                     for n, d, s, b in outputs]}).encode()
    body = header + b"".join(o[3] for o in outputs)
    (record,) = answer(200, {"Inference-Header-Content-Length": str(len(header))}, body, schema)["predictions"]
    assert record["abuse"]["decision"] == "review" and record["abuse"]["label"] == "abusive"
