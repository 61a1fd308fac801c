"""Is a ``model.pt`` a probability model? Checked at import and at build.

``check_bundle_model`` is what ``tce build`` asks before it writes anything: the file
loads (``tce.models.loading``: a damaged one is one line naming it) and its outputs are
probabilities.

The forward contract returns every task's class probabilities side by side. A model
that returns logits would be served as if they were probabilities: calibration tables
clamp them, labels still look plausible, and nothing fails. So on sample inputs each
task's columns must be finite, non-negative and sum to 1 per row.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from tce.models.length_trim import run_numpy, sample_batches
from tce.models.loading import load_torchscript
from tce_backends.bundle import MODEL_FILE, Bundle
from tce_backends.errors import UsageError
from tce_backends.tasks import TaskSpec, task_columns, total_classes
from tce_backends.text import TextPreprocessor

SUM_TOLERANCE = 1e-3


class NotProbabilitiesError(UsageError):
    """The model's outputs are not per-task probabilities (logits, scores, a wrong width)."""


def check_probabilities(module: torch.jit.ScriptModule, name: str, text: TextPreprocessor, num_features: int,
                        tasks: Sequence[TaskSpec]) -> None:
    """``module``: the loaded model; ``name``: its file name, for the messages."""
    module = module.eval()
    width = total_classes(tasks)
    for batch in sample_batches(text, num_features):
        try:
            outputs = run_numpy(module, batch)
        except (RuntimeError, torch.jit.Error) as error:
            raise NotProbabilitiesError(f"{name}: the model fails on sample inputs: "
                                        f"{str(error).splitlines()[0]}") from None
        if outputs.ndim != 2 or outputs.shape[1] != width:
            raise NotProbabilitiesError(f"{name}: outputs have shape {tuple(outputs.shape)}, expected "
                                        f"[records, {width}] (the classes of {', '.join(t.name for t in tasks)})")
        for task, columns in task_columns(tasks).items():
            probabilities = outputs[:, columns]
            sums = probabilities.sum(axis=1)
            if not np.isfinite(probabilities).all() or (probabilities < 0).any() or \
                    np.abs(sums - 1).max() > SUM_TOLERANCE:
                worst = float(sums[np.argmax(np.abs(np.nan_to_num(sums, nan=np.inf) - 1))])
                raise NotProbabilitiesError(
                    f"{name}: task {task!r} returns values in [{np.nanmin(probabilities):.3g}, "
                    f"{np.nanmax(probabilities):.3g}] with a row summing to {worst:.3g}: not probabilities "
                    "(logits?); end the forward with a softmax per task")


def check_bundle_model(bundle: Bundle) -> None:
    """The bundle's ``model.pt`` loads and returns probabilities, or one ``UsageError`` line."""
    check_probabilities(load_torchscript(bundle.model_path), MODEL_FILE, bundle.text,
                        len(bundle.manifest.features.names), bundle.manifest.tasks)
