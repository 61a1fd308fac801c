"""The in-process reference pipeline: the whole ensemble in one process, running
the same ``EnsembleGraph`` the repository builder renders into the ensemble config,
with the same step objects the Triton models run. The served ensemble must match it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .bundle import Bundle
from .graph import MULTIMODAL_MODEL, check_names, ensemble_graph
from .steps import ModelStep, Step, Tensors
from .tasks import total_classes


class ReferencePipeline:
    """``model``: run this callable (numpy arrays in forward order -> probabilities)
    instead of loading ``model.pt`` on the CPU. ``roots``: load these steps from other
    directories laid out like a bundle (a release's step versions in a repository)."""

    def __init__(self, bundle: Bundle, model: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None,
                 roots: Mapping[str, Path] | None = None) -> None:
        roots = roots or {}
        manifest = bundle.manifest
        self.graph = ensemble_graph(manifest, bundle.text.fields)
        self.steps: dict[str, Step] = {}
        for node in self.graph.steps:
            if node.name == MULTIMODAL_MODEL:
                step: Step = (ModelStep(model, manifest.text_fields, total_classes(manifest.tasks)) if model
                              else ModelStep.load(roots.get(node.name, bundle.root), manifest, device="cpu"))
            else:
                step = node.kind.step_type.load(roots.get(node.name, bundle.root), manifest)
            check_names(node, step)
            self.steps[node.name] = step

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.graph.inputs)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Ensemble inputs (as a client sends them) -> ensemble outputs."""
        return self.graph.run(self.steps, inputs)
