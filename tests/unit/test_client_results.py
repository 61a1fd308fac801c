import numpy as np

from tce_client.results import Prediction, TaskResult, predictions_to_frame


def _result(task: str, classes: tuple[str, ...], raw: list[float], calibrated: list[float]) -> TaskResult:
    return TaskResult(task, classes, np.float32(raw), np.float32(calibrated),
                      classes[int(np.argmax(raw))], calibration_fallback=False)


def test_one_task_frame_keeps_the_seed_column_order():
    prediction = Prediction({"abuse": _result("abuse", ("no", "yes"), [0.25, 0.75], [0.5, 0.5])}, "v1")
    frame = predictions_to_frame([prediction])
    assert list(frame.columns) == ["prob_class_0", "calibrated_prob_class_0", "prob_class_1",
                                   "calibrated_prob_class_1", "abuse_label", "abuse_decision",
                                   "abuse_calibration_fallback", "calibration_version"]
    assert frame.loc[0, "prob_class_1"] == 0.75 and frame.loc[0, "abuse_label"] == "yes"


def test_several_tasks_prefix_their_columns():
    prediction = Prediction({"abuse": _result("abuse", ("no", "yes"), [0.9, 0.1], [0.8, 0.2]),
                             "reason": _result("reason", ("a", "b", "c"), [0.1, 0.2, 0.7], [0.2, 0.2, 0.6])}, "v2")
    frame = predictions_to_frame([prediction, prediction])
    assert list(frame.columns[:2]) == ["abuse_prob_class_0", "abuse_calibrated_prob_class_0"]
    assert "reason_calibrated_prob_class_2" in frame and len(frame) == 2
    assert frame["reason_label"].tolist() == ["c", "c"]
