"""A Triton Python model that runs one step on the whole list of requests.

``execute`` validates each request on its own (a bad one gets its own
``TritonError`` naming the field, with the invalid-argument code), concatenates the
good ones into one batch, runs the step once and splits the outputs back. If the
merged batch fails unexpectedly, each request is retried alone so one poisoned
request cannot fail its neighbours.
"""
from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from ..bundle import Manifest
from ..errors import InputError
from ..graph import StepKind
from ..steps import Step, Tensors


class StepModel:
    """Base ``TritonPythonModel``: subclasses name their ``kind`` in the step registry
    (``tce_backends.graph.STEPS``) and may pass it options from the model config."""

    kind: StepKind
    step: Step

    def step_options(self, args: dict[str, Any]) -> dict[str, Any]:
        return {}

    def create_step(self, version_dir: Path, manifest: Manifest, args: dict[str, Any]) -> Step:
        step = self.kind.step_type.load(version_dir, manifest, **self.step_options(args))
        self.logger.log_info(f"{self.name}: {type(step).__name__} loaded")
        return step

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_config = json.loads(args["model_config"])
        self.name = self.model_config["name"]
        self.version_dir = Path(args["model_repository"]) / args["model_version"]
        self.logger = pb_utils.Logger
        manifest = Manifest.load(self.version_dir)
        self.step = self.create_step(self.version_dir, manifest, args)
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
                              for o in self.model_config["output"]}
        declared = ([i["name"] for i in self.model_config["input"]], list(self.output_dtypes))
        if (list(self.step.input_names), list(self.step.output_names)) != declared:
            raise pb_utils.TritonModelException(
                f"{self.name}: the step speaks {list(self.step.input_names)} -> {list(self.step.output_names)}, "
                f"config.pbtxt declares {declared[0]} -> {declared[1]}; rebuild the repository with 'tce build'")

    def marked_requests(self, requests: list[Any]) -> frozenset[int]:
        """Indexes of requests whose rows ``after_run`` should see as the health canary's."""
        return frozenset()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        accepted: list[tuple[int, Tensors]] = []
        marked = self.marked_requests(requests)
        for index, request in enumerate(requests):
            try:
                accepted.append((index, self.step.validate(self._inputs(request))))
            except InputError as error:
                responses[index] = self._error(str(error), pb_utils.TritonError.INVALID_ARG)
            except Exception as error:  # noqa: BLE001 - never let one request crash the step
                responses[index] = self._error(f"{self.name}: invalid request: {error}",
                                               pb_utils.TritonError.INVALID_ARG)
        if accepted:
            try:
                self._run_batch(accepted, responses, marked)
            except Exception:  # noqa: BLE001
                self.logger.log_warn(f"{self.name}: batch of {len(accepted)} failed, retrying requests alone:\n"
                                     f"{traceback.format_exc()}")
                for item in accepted:
                    try:
                        self._run_batch([item], responses, marked)
                    except InputError as error:
                        responses[item[0]] = self._error(str(error), pb_utils.TritonError.INVALID_ARG)
                    except Exception as error:  # noqa: BLE001
                        responses[item[0]] = self._error(f"{self.name}: failed: {error}")
        return responses

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        inputs = {}
        for name in self.step.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        return inputs

    def _run_batch(self, accepted: list[tuple[int, Tensors]], responses: list[Any],
                   marked: frozenset[int] = frozenset()) -> None:
        sizes = [next(iter(tensors.values())).shape[0] for _, tensors in accepted]
        # A lone request (the common case at low load) is run as it came: no copy in, no slicing out.
        merged = accepted[0][1] if len(accepted) == 1 else {
            name: np.concatenate([tensors[name] for _, tensors in accepted]) for name in accepted[0][1]}
        outputs = self.step.run(merged)
        bounds = np.cumsum([0, *sizes])
        wrong = {name: outputs[name].shape[:1] for name in self.step.output_names
                 if outputs[name].shape[:1] != (bounds[-1],)}
        if wrong:  # splitting would hand one request's rows to another
            raise RuntimeError(f"{self.name}: outputs {wrong} do not have the batch's {bounds[-1]} rows")
        outputs = {name: np.ascontiguousarray(outputs[name], dtype=self.output_dtypes[name])
                   for name in self.step.output_names}
        for (index, _), start, stop in zip(accepted, bounds[:-1], bounds[1:], strict=True):
            # Row slices of a C-contiguous array are contiguous views: no copy per request.
            tensors = [pb_utils.Tensor(name, array[start:stop]) for name, array in outputs.items()]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        # Counted once every response of the batch exists: a batch that fails before this point is
        # retried request by request, and its rows must not be counted twice.
        canary_rows = np.repeat([index in marked for index, _ in accepted], sizes) if marked else None
        self.after_run(outputs, canary_rows)

    def after_run(self, outputs: Tensors, canary_rows: np.ndarray | None = None) -> None:
        """Hook for per-batch bookkeeping (metrics); ``canary_rows``: bool [batch] marking the
        rows of ``marked_requests``, None when the batch has none."""

    @staticmethod
    def _error(message: str, code: Any = None) -> Any:
        code = pb_utils.TritonError.INTERNAL if code is None else code
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    def finalize(self) -> None:
        self.step = None  # type: ignore[assignment]
