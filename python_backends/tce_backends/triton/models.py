"""The three ``TritonPythonModel`` classes; each ``model.py`` in the repository
imports one of them and nothing else."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from ..bundle import Manifest
from ..contract import CALIBRATION_FALLBACK
from ..graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR, STEP_KINDS
from ..steps import CalibratorStep, Step, Tensors
from .base import StepModel


def _parameter(model: StepModel, key: str, default: str) -> str:
    """A ``parameters`` entry of the model's config.pbtxt."""
    return model.model_config.get("parameters", {}).get(key, {}).get("string_value", default)


class PreprocessorModel(StepModel):
    """The ensemble's entry: validates every caller input, then text pipeline,
    tokenizer and tabular preprocessing. Its config runs one request per execution by
    default, so a request Triton itself fails (malformed BYTES) never shares a batch;
    ``tce build --preprocessor-batching`` lets it merge requests behind the gateway."""

    kind = STEP_KINDS[PREPROCESSOR]


class MultimodalModel(StepModel):
    """Python-backend host of ``model.pt`` (the embedded server has no libtorch backend)."""

    kind = STEP_KINDS[MULTIMODAL_MODEL]

    def step_options(self, args: dict[str, Any]) -> dict[str, Any]:
        device = _parameter(self, "device", "auto")
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        return {"device": device, "num_threads": int(_parameter(self, "num_threads", "0")) or None}


class CalibratorModel(StepModel):
    """Applies the calibration tables; a table that fails to load or apply falls
    back to raw, visibly: response flag, Prometheus counter, one log line."""

    kind = STEP_KINDS[CALIBRATOR]

    def create_step(self, version_dir: Path, manifest: Manifest, args: dict[str, Any]) -> Step:
        step = super().create_step(version_dir, manifest, args)
        assert isinstance(step, CalibratorStep)
        calibrator = step.calibrator
        self.task_names = [t.name for t in manifest.tasks]
        self.fallback_family = pb_utils.MetricFamily(
            name="tce_calibration_fallback_total",
            description="Predictions whose calibrated score fell back to the raw score",
            kind=pb_utils.MetricFamily.COUNTER)
        self.prediction_family = pb_utils.MetricFamily(
            name="tce_calibrated_predictions_total",
            description="Predictions that went through the calibrator",
            kind=pb_utils.MetricFamily.COUNTER)
        labels = {"model": self.name, "version": str(args["model_version"])}
        self.fallback_counters = {t: self.fallback_family.Metric(labels={**labels, "task": t})
                                  for t in self.task_names}
        self.prediction_counters = {t: self.prediction_family.Metric(labels={**labels, "task": t})
                                    for t in self.task_names}
        self.logged_fallback: set[str] = set()
        for task, reason in calibrator.fallback_reasons.items():
            self.logger.log_warn(f"{self.name}: calibration for task '{task}' unavailable, serving raw scores "
                                 f"as calibrated: {reason}")
            self.logged_fallback.add(task)
        self.logger.log_info(f"{self.name}: calibration version {calibrator.version}")
        return step

    def after_run(self, outputs: Tensors) -> None:
        flags = outputs[CALIBRATION_FALLBACK]
        counts = flags.sum(axis=0)
        for index, task in enumerate(self.task_names):
            self.prediction_counters[task].increment(int(flags.shape[0]))
            if counts[index]:
                self.fallback_counters[task].increment(int(counts[index]))
                if task not in self.logged_fallback:
                    self.logged_fallback.add(task)
                    self.logger.log_warn(f"{self.name}: calibration of task '{task}' failed for "
                                         f"{int(counts[index])} prediction(s); served raw scores as calibrated")
