"""``StepModel.execute`` (merge, split, retry alone, output rows checked) with a stub
``triton_python_backend_utils``: the batching glue, without a server."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from tce_backends.bundle import Manifest
from tce_backends.errors import InputError
from tce_backends.features import FeatureLayout
from tce_backends.tasks import TaskSpec


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _TritonError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message: str, code: str = INTERNAL) -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: _TritonError | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs


def _stub_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.TritonError = _TritonError
    module.InferenceResponse = _Response
    module.TritonModelException = RuntimeError
    module.get_input_tensor_by_name = lambda request, name: (
        _Tensor(name, request.inputs[name]) if name in request.inputs else None)
    module.triton_string_to_numpy = lambda data_type: {"TYPE_FP32": np.float32, "TYPE_STRING": np.object_}[data_type]
    module.Logger = types.SimpleNamespace(log_info=lambda *_: None, log_warn=lambda *_: None)
    return module


@pytest.fixture()
def step_model(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stub_pb_utils())
    for name in [m for m in sys.modules if m.startswith("tce_backends.triton")]:
        monkeypatch.delitem(sys.modules, name)
    from tce_backends.triton.base import StepModel

    class Doubler:
        """x -> 2x; a row of 13 is poison (fails any batch it is in); -1 is invalid input."""

        input_names, output_names = ("x",), ("y",)
        runs: list[int] = []
        drop_a_row = False

        def validate(self, inputs):
            if (inputs["x"] < 0).any():
                raise InputError("x", "must be >= 0")
            return {"x": inputs["x"]}

        def run(self, inputs):
            Doubler.runs.append(len(inputs["x"]))
            if (inputs["x"] == 13).any():
                raise RuntimeError("poisoned batch")
            y = inputs["x"] * 2
            return {"y": y[:-1] if Doubler.drop_a_row else y}

    class DoublerModel(StepModel):
        def create_step(self, version_dir, manifest, args):
            return Doubler()

    version = tmp_path / "1"
    Manifest("m", "", ("text",), FeatureLayout.from_lists(["a"], []), (TaskSpec("t", "binary", ("n", "y")),)
             ).save(version)
    config = {"name": "doubler", "input": [{"name": "x", "data_type": "TYPE_FP32"}],
              "output": [{"name": "y", "data_type": "TYPE_FP32"}]}
    model = DoublerModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    Doubler.runs.clear()
    return model, Doubler


def _x(*values: float) -> _Request:
    return _Request(x=np.array(values, dtype=np.float32)[:, None])


def test_requests_are_merged_into_one_run_and_split_back(step_model):
    model, step = step_model
    responses = model.execute([_x(1, 2), _x(3), _x(4, 5, 6)])
    assert step.runs == [6]
    assert [r.outputs["y"][:, 0].tolist() for r in responses] == [[2, 4], [6], [8, 10, 12]]
    assert all(r.error is None for r in responses)


def test_an_invalid_request_fails_alone_with_invalid_argument(step_model):
    model, step = step_model
    responses = model.execute([_x(1), _x(-1), _x(2)])
    assert responses[1].error.code == "INVALID_ARG" and "input 'x'" in responses[1].error.message
    assert [responses[0].outputs["y"][0, 0], responses[2].outputs["y"][0, 0]] == [2, 4]
    assert step.runs == [2]


def test_a_failing_batch_is_retried_request_by_request(step_model):
    model, step = step_model
    responses = model.execute([_x(1), _x(13), _x(2, 3)])
    assert step.runs == [4, 1, 1, 2]  # merged, then each alone
    assert responses[1].error.code == "INTERNAL" and "poisoned batch" in responses[1].error.message
    assert responses[0].outputs["y"][0, 0] == 2 and responses[2].outputs["y"][:, 0].tolist() == [4, 6]


def test_outputs_with_the_wrong_number_of_rows_are_an_error_not_a_shifted_split(step_model):
    model, step = step_model
    step.drop_a_row = True
    try:
        responses = model.execute([_x(1), _x(2)])
    finally:
        step.drop_a_row = False
    assert all(r.error is not None and "rows" in r.error.message for r in responses)


def test_a_config_that_disagrees_with_the_step_fails_at_load(monkeypatch, tmp_path, step_model):
    model, _ = step_model
    config = {"name": "doubler", "input": [{"name": "x", "data_type": "TYPE_FP32"}],
              "output": [{"name": "z", "data_type": "TYPE_FP32"}]}
    with pytest.raises(RuntimeError, match="config.pbtxt declares"):
        type(model)().initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path),
                                  "model_version": "1"})
