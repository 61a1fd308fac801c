import json

import numpy as np
import pytest

from tce_client import Prediction, TaskResult, to_seed_csv, to_seed_json


def _prediction(raw_binary, cal_binary, raw_multi, cal_multi):
    return Prediction({
        "abuse": TaskResult("abuse", ("legit", "abusive"), np.float32(raw_binary), np.float32(cal_binary),
                            "legit", False),
        "reason": TaskResult("reason", ("a", "b", "c"), np.float32(raw_multi), np.float32(cal_multi), "b", False),
    }, "v1")


PREDICTIONS = [_prediction([0.85, 0.15], [0.8, 0.2], [0.2, 0.5, 0.3], [0.25, 0.45, 0.3]),
               _prediction([0.1, 0.9], [0.3, 0.7], [0.6, 0.3, 0.1], [0.5, 0.3, 0.2])]


def test_binary_seed_json_matches_seed_output_fn():
    body = json.loads(to_seed_json(PREDICTIONS, "abuse"))
    first = body["predictions"][0]
    assert set(first) == {"legacy-score", "calibrated-score", "output-label"}
    # seed: str() of the Python float from .tolist() of float32 probabilities
    assert first["legacy-score"] == str(np.float32(0.15).tolist())
    assert first["calibrated-score"] == str(np.float32(0.2).tolist())
    assert [p["output-label"] for p in body["predictions"]] == ["class-0", "class-1"]


def test_multiclass_seed_json_uses_two_digit_one_based_fields():
    body = json.loads(to_seed_json(PREDICTIONS, "reason"))
    first = body["predictions"][0]
    assert list(first) == ["prob_01", "calibrated_prob_01", "prob_02", "calibrated_prob_02", "prob_03",
                           "calibrated_prob_03", "output-label"]
    assert first["output-label"] == "class-1" and body["predictions"][1]["output-label"] == "class-0"


def test_seed_csv_has_the_json_fields_as_header():
    lines = to_seed_csv(PREDICTIONS, "abuse").splitlines()
    assert lines[0] == "legacy-score,calibrated-score,output-label"
    assert lines[2].endswith(",class-1") and len(lines) == 3


def test_task_must_be_named_for_multi_task_models():
    with pytest.raises(ValueError, match="name the one"):
        to_seed_json(PREDICTIONS)
