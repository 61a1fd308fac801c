"""The in-process reference pipeline: the whole ensemble in one process, built
from the same step objects the Triton models run. The served ensemble must match it."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .steps import CalibratorStep, ModelStep, PreprocessStep, Tensors
from .tasks import total_classes


class ReferencePipeline:
    def __init__(self, bundle: Bundle, model: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None) -> None:
        if model is None:
            from .model_runner import ModelRunner
            model = ModelRunner(bundle.model_path, device="cpu")
        self.preprocessor = PreprocessStep(bundle.text, bundle.tabular)
        self.model = ModelStep(model, bundle.manifest.text_fields, total_classes(bundle.manifest.tasks))
        self.calibrator = CalibratorStep(bundle.calibrator)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.preprocessor.input_names

    def preprocess(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        return self.preprocessor.run(self.preprocessor.validate(inputs))

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Ensemble inputs (as a client sends them) -> ensemble outputs."""
        probabilities = self.model.run(self.preprocess(inputs))
        return self.calibrator.run(probabilities)
