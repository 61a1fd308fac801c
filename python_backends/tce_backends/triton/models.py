"""The three ``TritonPythonModel`` classes; each ``model.py`` in the repository
imports one of them and nothing else."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import triton_python_backend_utils as pb_utils

from ..bundle import CALIBRATION_DIR, Manifest
from ..contract import CALIBRATION_FALLBACK, CANARY_PARAMETER
from ..errors import BundleError
from ..graph import CALIBRATOR, MULTIMODAL_MODEL, PREPROCESSOR, STEP_KINDS
from ..score_metrics import (
    DEFAULT_FLUSH_S,
    REFERENCE_FILE,
    CalibratorMetrics,
    PeriodicFlush,
    ReferenceScores,
    ScoreTally,
)
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


class TritonMetricSink:
    """``score_metrics.MetricSink`` over Triton's registry: one family per metric name, held
    as long as its metrics (Triton wants a family deleted after its metrics)."""

    def __init__(self) -> None:
        self.families: dict[str, Any] = {}

    def _family(self, name: str, description: str, kind: Any) -> Any:
        if name not in self.families:
            self.families[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        return self.families[name]

    def counter(self, name: str, description: str, labels: Mapping[str, str]) -> Any:
        return self._family(name, description, pb_utils.MetricFamily.COUNTER).Metric(labels=dict(labels))

    def gauge(self, name: str, description: str, labels: Mapping[str, str]) -> Any:
        return self._family(name, description, pb_utils.MetricFamily.GAUGE).Metric(labels=dict(labels))


class CalibratorModel(StepModel):
    """Applies the calibration tables; a table that fails to load or apply falls
    back to raw, visibly: response flag, Prometheus counter, one log line.

    Exports the score metrics of ``tce_backends.score_metrics``: each batch is tallied in
    process and a thread publishes the tally every ``metrics_flush_s`` (config parameter,
    default ``DEFAULT_FLUSH_S``; 0 publishes from ``execute`` after every batch; parameter
    ``score_metrics`` "false" keeps only the counters). Rows of requests carrying the
    ``CANARY_PARAMETER`` are counted apart, in no other metric."""

    kind = STEP_KINDS[CALIBRATOR]
    flusher: PeriodicFlush | None = None

    def create_step(self, version_dir: Path, manifest: Manifest, args: dict[str, Any]) -> Step:
        step = super().create_step(version_dir, manifest, args)
        assert isinstance(step, CalibratorStep)
        calibrator = step.calibrator
        self.task_names = [t.name for t in manifest.tasks]
        self.logged_fallback: set[str] = set()
        for task, reason in calibrator.fallback_reasons.items():
            self.logger.log_warn(f"{self.name}: calibration for task '{task}' unavailable, serving raw scores "
                                 f"as calibrated: {reason}")
            self.logged_fallback.add(task)
        if calibrator.policy_problem:
            self.logger.log_warn(f"{self.name}: decision policy unavailable, every task decides by its label: "
                                 f"{calibrator.policy_problem}")
        self.logger.log_info(f"{self.name}: calibration version {calibrator.version}")
        # score_metrics "false": only the prediction, fallback and canary counters (a task of very
        # many classes makes many series: 13 per class and score kind)
        scores = _parameter(self, "score_metrics", "true").lower() != "false"
        self.sink = TritonMetricSink()
        self.metrics = CalibratorMetrics(self.sink, manifest.tasks, {"model": self.name,
                                                                    "version": str(args["model_version"])},
                                         step.release, calibrator.version,
                                         self._reference(version_dir, manifest) if scores else None, scores)
        self.tally = ScoreTally(manifest.tasks, scores)
        return step

    def _reference(self, version_dir: Path, manifest: Manifest) -> ReferenceScores | None:
        try:
            reference = ReferenceScores.load(version_dir / CALIBRATION_DIR, manifest.tasks)
        except BundleError as error:
            self.logger.log_warn(f"{self.name}: no drift reference, score drift cannot be computed: {error}")
            return None
        if reference is None:
            self.logger.log_warn(f"{self.name}: the bundle stores no reference score distribution "
                                 f"({CALIBRATION_DIR}/{REFERENCE_FILE}): score drift (PSI) cannot be computed "
                                 "for it; 'tce calibrate fit' stores one")
        else:
            missing = [t for t in self.task_names if t not in reference.counts]
            self.logger.log_info(f"{self.name}: drift reference for tasks "
                                 f"{[t for t in self.task_names if t in reference.counts]}"
                                 + (f", none for {missing}" if missing else ""))
        return reference

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        text = _parameter(self, "metrics_flush_s", str(DEFAULT_FLUSH_S))
        try:
            interval_s = float(text)
        except ValueError:
            raise pb_utils.TritonModelException(f"{self.name}: config parameter metrics_flush_s must be a number "
                                                f"of seconds, got {text!r}") from None
        if interval_s > 0:  # from here on only this thread updates metrics
            self.flusher = PeriodicFlush(self._publish, interval_s, self.logger.log_warn).start()

    def _publish(self) -> None:
        self.metrics.publish(self.tally.take())

    def marked_requests(self, requests: list[Any]) -> frozenset[int]:
        marked = []
        for index, request in enumerate(requests):
            try:
                text = request.parameters()  # JSON of the request's parameters, usually "{}"
                if CANARY_PARAMETER in text and json.loads(text).get(CANARY_PARAMETER) is True:
                    marked.append(index)
            except Exception:  # noqa: BLE001 - whatever a caller sent, it is an ordinary request
                continue
        return frozenset(marked)

    def after_run(self, outputs: Tensors, canary_rows: np.ndarray | None = None) -> None:
        self.tally.add(outputs, canary_rows)
        if self.flusher is None:
            self._publish()
        flags = outputs[CALIBRATION_FALLBACK]
        if flags.any():
            counts = flags.sum(axis=0)
            for index, task in enumerate(self.task_names):
                if counts[index] and task not in self.logged_fallback:
                    self.logged_fallback.add(task)
                    self.logger.log_warn(f"{self.name}: calibration of task '{task}' failed for "
                                         f"{int(counts[index])} prediction(s); served raw scores as calibrated")

    def finalize(self) -> None:
        if self.flusher is None or self.flusher.stop():
            self._publish()  # what the last interval tallied (never beside a running flush thread)
        self.metrics = None  # type: ignore[assignment]  # metrics before their families
        self.sink = None  # type: ignore[assignment]
        super().finalize()
