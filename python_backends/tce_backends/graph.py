"""The ensemble as one graph: every step is described once, here.

``STEPS`` lists the steps in chain order with what the repository builder needs
(the ``TritonPythonModel`` class its ``model.py`` imports, the bundle parts its
version directory holds) and the ``Step`` class that runs it. Tensor specs come
from each step class's ``signature``. The ensemble's wiring follows from the
names: a step reads the ensemble tensor of the same plain name, and positional
names (``tabular__2``) are renamed to plain ones (``tabular``) at the step that
uses them. The repository builder renders configs from ``EnsembleGraph`` and the
in-process ``ReferencePipeline`` runs the same ``EnsembleGraph``, so they cannot
describe two different ensembles.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .bundle import CALIBRATION_DIR, MODEL_FILE, TABULAR_DIR, TEXT_DIR, Manifest
from .contract import TensorSpec, plain
from .steps import CalibratorStep, ModelStep, PreprocessStep, Step, Tensors
from .text import TextFieldConfig


@dataclass(frozen=True)
class StepKind:
    """What the registry knows of one step, before any bundle is seen."""

    name: str                  # model-repository name
    model_class: str           # TritonPythonModel class in tce_backends.triton.models
    parts: tuple[str, ...]     # bundle parts its version directory holds (beside manifest.json)
    step_type: type            # the Step class: signature, load, validate, run


STEPS: tuple[StepKind, ...] = (
    StepKind("preprocessor", "PreprocessorModel", (TEXT_DIR, TABULAR_DIR), PreprocessStep),
    StepKind("multimodal_model", "MultimodalModel", (MODEL_FILE,), ModelStep),
    StepKind("calibrator", "CalibratorModel", (CALIBRATION_DIR,), CalibratorStep),
)
STEP_KINDS: Mapping[str, StepKind] = {kind.name: kind for kind in STEPS}
PREPROCESSOR, MULTIMODAL_MODEL, CALIBRATOR = (kind.name for kind in STEPS)


@dataclass(frozen=True)
class StepNode:
    """One step of one bundle's ensemble: its tensors and their ensemble names."""

    kind: StepKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def input_map(self) -> tuple[tuple[str, str], ...]:
        """(step input, ensemble tensor) pairs."""
        return tuple((spec.name, plain(spec.name)) for spec in self.inputs)

    @property
    def output_map(self) -> tuple[tuple[str, str], ...]:
        """(step output, ensemble tensor) pairs."""
        return tuple((spec.name, plain(spec.name)) for spec in self.outputs)


@dataclass(frozen=True)
class EnsembleGraph:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[StepNode, ...]

    def __post_init__(self) -> None:
        available = {spec.name: spec for spec in self.inputs}
        for node in self.steps:
            for spec, (_, tensor) in zip(node.inputs, node.input_map, strict=True):
                if tensor not in available:
                    raise ValueError(f"step {node.name!r} reads {tensor!r}, which no earlier step produces")
                if (available[tensor].data_type, available[tensor].dims) != (spec.data_type, spec.dims):
                    raise ValueError(f"step {node.name!r} reads {tensor!r} as {spec}, produced as "
                                     f"{available[tensor]}")
            available.update({tensor: spec for spec, (_, tensor) in zip(node.outputs, node.output_map, strict=True)})
        missing = [spec.name for spec in self.outputs if spec.name not in available]
        if missing:
            raise ValueError(f"ensemble outputs {missing} are produced by no step")

    def node(self, name: str) -> StepNode:
        return next(node for node in self.steps if node.name == name)

    def run(self, steps: Mapping[str, Step], inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Ensemble inputs -> ensemble outputs, step by step as the ensemble scheduler
        wires them (each step validates what it receives, as its Triton model does)."""
        tensors = dict(inputs)
        for node in self.steps:
            step = steps[node.name]
            received = {name: tensors[tensor] for name, tensor in node.input_map if tensor in tensors}
            produced = step.run(step.validate(received))
            tensors.update({tensor: produced[name] for name, tensor in node.output_map})
        return {spec.name: tensors[spec.name] for spec in self.outputs}


def ensemble_graph(manifest: Manifest, text_fields: Sequence[TextFieldConfig]) -> EnsembleGraph:
    """The chain for one bundle: the first step takes every caller input, the last
    step's outputs are the ensemble's."""
    if tuple(f.name for f in text_fields) != manifest.text_fields:
        raise ValueError("text field settings do not match the manifest's text fields")
    nodes = []
    for kind in STEPS:
        signature = kind.step_type.signature(manifest, text_fields)
        nodes.append(StepNode(kind, signature.inputs, signature.outputs))
    return EnsembleGraph(nodes[0].inputs, nodes[-1].outputs, tuple(nodes))


def check_names(node: StepNode, step: Step) -> None:
    """A loaded step must speak exactly its node's tensor names (in the Triton model
    the node is its config.pbtxt)."""
    expected = (tuple(s.name for s in node.inputs), tuple(s.name for s in node.outputs))
    if (tuple(step.input_names), tuple(step.output_names)) != expected:
        raise ValueError(f"step {node.name!r} speaks {step.input_names} -> {step.output_names}, "
                         f"its node {expected[0]} -> {expected[1]}")
