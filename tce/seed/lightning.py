"""Seed 001's ``model.pth`` (a PyTorch Lightning checkpoint) as this project's ``model.pt``.

The user names the class that built the model (``--model-class package.module:Class``);
it is constructed from ``model_artifacts.pth``'s ``config`` and given the checkpoint's
weights. Both files are read with ``torch.load(weights_only=True)``: tensors, numpy
arrays and plain containers only, never arbitrary pickled objects. A Lightning
``state_dict`` whose keys carry the LightningModule's attribute prefix (``model.``) is
matched to the class either way.

The seed's models take one dict batch and return logits. ``SeedForward`` turns that into
this project's forward contract: positional ``(input_ids, attention_mask)`` per text
field and the tabular matrix in, every task's probabilities side by side out (softmax
per task; a single logit column of a binary task goes through a sigmoid). The batch
holds ``<field>_<input_ids_key>`` and ``<field>_<attention_mask_key>`` (int64,
``[records, chunks, tokens]``; the keys default to ``input_ids`` and
``attention_mask`` as in the seed's config), ``tabular`` (float32 ``[records,
features]``) and each feature by name (``[records]``). The model may return a tensor (one
task), or a list, tuple or dict of tensors in task order. The wrapper is exported with
``torch.jit.trace``; eager and TorchScript outputs must agree on sample inputs (other
batch sizes and lengths than the traced one), or the import stops.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tce.models.length_trim import run_numpy, sample_batches
from tce.seed.errors import SeedImportError
from tce_backends.tasks import TaskSpec
from tce_backends.text import TextPreprocessor

AGREEMENT = 1e-5


def load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with numpy arrays (the artifacts' embedding
    matrix) allowed as data."""
    safe = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float32)),
            type(np.dtype(np.float64)), type(np.dtype(np.int64))]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SeedImportError(path.name, f"cannot be read as weights only (tensors, arrays, plain containers): "
                                         f"{first}") from None


def resolve_class(spec: str) -> type:
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise SeedImportError("--model-class", f"expected package.module:Class, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SeedImportError("--model-class", f"cannot import {module_name!r}: {error}") from None
    found = getattr(module, class_name, None)
    if not isinstance(found, type) or not issubclass(found, nn.Module):
        raise SeedImportError("--model-class", f"{spec!r} is not an nn.Module class")
    return found


def _state_dict(checkpoint: Any) -> dict[str, Tensor]:
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SeedImportError("model.pth", "holds no state_dict of tensors (a Lightning checkpoint has 'state_dict')")
    return state


def load_into(model: nn.Module, checkpoint: Any) -> None:
    """The checkpoint's weights, with a LightningModule's attribute prefix stripped when
    the class is the inner module."""
    state = _state_dict(checkpoint)
    own = set(model.state_dict())
    if not own & set(state):
        prefixes = {key.split(".", 1)[0] + "." for key in state if "." in key}
        for prefix in sorted(prefixes):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if own <= set(stripped):
                state = stripped
                break
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise SeedImportError("model.pth", f"weights do not fit the class: missing {missing[:5]}, unexpected "
                                           f"{unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shapes that do not fit
        raise SeedImportError("model.pth", f"weights do not fit the class: {' '.join(str(error).split())[:300]}") \
            from None


class SeedForward(nn.Module):
    """A dict-batch, logits model behind this project's positional, probabilities contract."""

    def __init__(self, inner: nn.Module, text_fields: Sequence[str], features: Sequence[str],
                 tasks: Sequence[TaskSpec], input_ids_key: str = "input_ids",
                 attention_mask_key: str = "attention_mask") -> None:
        super().__init__()
        self.inner = inner
        self.text_fields = list(text_fields)
        self.features = list(features)
        self.widths = [t.num_classes for t in tasks]
        self.keys = (input_ids_key, attention_mask_key)

    def forward(self, *inputs: Tensor) -> Tensor:
        batch: dict[str, Tensor] = {}
        for index, field in enumerate(self.text_fields):
            batch[f"{field}_{self.keys[0]}"] = inputs[2 * index]
            batch[f"{field}_{self.keys[1]}"] = inputs[2 * index + 1]
        tabular = inputs[-1]
        batch["tabular"] = tabular
        for index, name in enumerate(self.features):
            batch[name] = tabular[:, index]
        out = self.inner(batch)
        logits = [out] if isinstance(out, Tensor) else list(out.values()) if isinstance(out, dict) else list(out)
        if len(logits) != len(self.widths):
            raise RuntimeError(f"the model returns {len(logits)} outputs for {len(self.widths)} tasks")
        probabilities = []
        for task, (task_logits, width) in enumerate(zip(logits, self.widths, strict=True)):
            task_logits = task_logits.float()
            if task_logits.shape[-1] != width and not (width == 2 and task_logits.shape[-1] == 1):
                raise RuntimeError(f"output {task} has {task_logits.shape[-1]} logits for a task of {width} classes")
            if width == 2 and task_logits.shape[-1] == 1:
                positive = torch.sigmoid(task_logits)
                probabilities.append(torch.cat([1 - positive, positive], dim=-1))
            else:
                probabilities.append(torch.softmax(task_logits, dim=-1))
        return torch.cat(probabilities, dim=-1)


def export_lightning(model_pth: Path, artifacts_pth: Path, model_class: str, text: TextPreprocessor,
                     features: Sequence[str], tasks: Sequence[TaskSpec], out: Path) -> str:
    """Build, load, wrap and trace the seed model into ``out`` (model.pt); returns a note."""
    artifacts = load_weights_only(artifacts_pth)
    config = artifacts.get("config") if isinstance(artifacts, dict) else None
    if not isinstance(config, dict):
        raise SeedImportError("model_artifacts.pth", "holds no 'config' dict to construct the model from")
    cls = resolve_class(model_class)
    try:
        inner = cls(config)
    except Exception as error:  # noqa: BLE001 - the user's constructor
        raise SeedImportError("--model-class", f"{model_class}(config) failed: {type(error).__name__}: {error}") \
            from None
    load_into(inner, load_weights_only(model_pth))
    wrapper = SeedForward(inner.eval(), [f.name for f in text.fields], features, tasks,
                          str(config.get("text_input_ids_key", "input_ids")),
                          str(config.get("text_attention_mask_key", "attention_mask"))).eval()
    batches = sample_batches(text, len(features))
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in batches[-1]]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: constant per model, as meant
            traced = torch.jit.trace(wrapper, tuple(tensors), check_trace=False)
    except Exception as error:  # noqa: BLE001 - tracing the user's forward
        raise SeedImportError("model.pth", f"the model does not run on this project's inputs: "
                                           f"{str(error).strip().splitlines()[0]}") from None
    worst = max(float(np.abs(run_numpy(wrapper, batch) - run_numpy(traced, batch)).max()) for batch in batches)
    if not worst <= AGREEMENT:
        raise SeedImportError("model.pth", f"TorchScript differs from the eager model by up to {worst:.2e} on sample "
                                           "inputs: its forward has control flow tracing cannot keep")
    traced.save(str(out))
    return f"model.pth: {model_class} exported to TorchScript (eager and TorchScript agree within {worst:.1e})"
