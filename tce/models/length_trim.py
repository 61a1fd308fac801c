"""Length-aware serving for a ``model.pt`` from elsewhere (seed import).

The step boundary keeps fixed ``[chunks, max_length]`` token tensors so that the
dynamic batcher can merge requests; this project's own model then trims padding
inside its forward (``tce/trainer/modeling.py``). A TorchScript model from elsewhere
gets a scripted wrapper that cuts each field's tokens after the batch's last real
position, but only when a check on sample inputs (empty text, one chunk, both
chunks full, mixed lengths in one batch) shows the same outputs within
``TOLERANCE``; otherwise it is served as it is, and the build says why.

A model that is length-aware has a ``trim_padding`` attribute: the benchmark turns
it off to time the naive fixed-padding forward of the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tce.models.loading import load_torchscript
from tce_backends.text import TextPreprocessor

TOLERANCE = 1e-5
TRIM_ATTRIBUTE = "trim_padding"



def real_length(attention_mask: Tensor) -> int:
    """One past the last position that holds a token in any row and chunk (at least 1):
    the sequence length a batch can be cut to without losing a token."""
    real = (attention_mask > 0).reshape(-1, attention_mask.shape[-1]).any(dim=0).nonzero()
    return int(real.max()) + 1 if real.numel() > 0 else 1

class TrimmedOneField(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.trim_padding = True

    def forward(self, input_ids: Tensor, attention_mask: Tensor, tabular: Tensor) -> Tensor:
        if self.trim_padding:
            length = real_length(attention_mask)
            input_ids, attention_mask = input_ids[:, :, :length], attention_mask[:, :, :length]
        return self.inner(input_ids, attention_mask, tabular)


class TrimmedTwoFields(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.trim_padding = True

    def forward(self, primary_input_ids: Tensor, primary_attention_mask: Tensor, secondary_input_ids: Tensor,
                secondary_attention_mask: Tensor, tabular: Tensor) -> Tensor:
        if self.trim_padding:
            first, second = real_length(primary_attention_mask), real_length(secondary_attention_mask)
            primary_input_ids, primary_attention_mask = (primary_input_ids[:, :, :first],
                                                         primary_attention_mask[:, :, :first])
            secondary_input_ids, secondary_attention_mask = (secondary_input_ids[:, :, :second],
                                                             secondary_attention_mask[:, :, :second])
        return self.inner(primary_input_ids, primary_attention_mask, secondary_input_ids, secondary_attention_mask,
                          tabular)


WRAPPERS = {1: TrimmedOneField, 2: TrimmedTwoFields}


@dataclass(frozen=True)
class TrimDecision:
    trimmed: bool
    reason: str

    def describe(self) -> str:
        return f"model.pt: {'padding trimmed' if self.trimmed else 'served untrimmed'} ({self.reason})"


def is_length_aware(module: torch.jit.ScriptModule) -> bool:
    return hasattr(module, TRIM_ATTRIBUTE)


def sample_batches(text: TextPreprocessor, num_features: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Model inputs that exercise trimming: each kind of record alone, then all in one batch."""
    rng = np.random.default_rng(seed)
    words = "refund parcel never arrived seller says tracking shows delivered please help".split()
    texts = ["", "hi", " ".join(rng.choice(words, size=12)), " ".join(rng.choice(words, size=400)),
             " ".join(rng.choice(words, size=40))]
    tabular = rng.normal(size=(len(texts), num_features)).astype(np.float32)
    inputs: list[np.ndarray] = []
    for field in text.fields:
        tokens = text.encode(field.name, texts)
        inputs += [tokens.input_ids, tokens.attention_mask]
    inputs.append(tabular)
    alone = [[array[i:i + 1] for array in inputs] for i in range(len(texts))]
    return [*alone, inputs]


def run_numpy(module: nn.Module, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One CPU forward of ``module`` on numpy arrays in its argument order."""
    with torch.inference_mode():
        return module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]).float().numpy()


def make_length_aware(model_path: Path, text: TextPreprocessor, num_features: int) -> TrimDecision:
    """Rewrite ``model_path`` as a trimming wrapper when that provably changes nothing."""
    module = load_torchscript(model_path).eval()
    if is_length_aware(module):
        return TrimDecision(True, "the model trims its own padding")
    fields = len(text.fields)
    if fields not in WRAPPERS:
        return TrimDecision(False, f"no trimming wrapper for {fields} text fields")
    try:
        wrapped = torch.jit.script(WRAPPERS[fields](module))
        worst = 0.0
        for batch in sample_batches(text, num_features):
            expected, got = run_numpy(module, batch), run_numpy(wrapped, batch)
            if expected.shape != got.shape:
                return TrimDecision(False, f"trimmed outputs have shape {got.shape}, untrimmed {expected.shape}")
            worst = max(worst, float(np.nan_to_num(np.abs(expected - got), nan=np.inf).max(initial=0.0)))
    except (RuntimeError, torch.jit.Error) as error:  # the model does not take shorter sequences
        return TrimDecision(False, f"the model fails on trimmed inputs: {str(error).splitlines()[0]}")
    if worst > TOLERANCE:
        return TrimDecision(False, f"trimmed outputs differ by up to {worst:.2e} on sample inputs "
                                   f"(tolerance {TOLERANCE:g})")
    wrapped.save(str(model_path))
    return TrimDecision(True, f"wrapper checked on sample inputs, max difference {worst:.1e}")
