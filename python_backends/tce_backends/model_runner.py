"""Runs ``model.pt`` (TorchScript) on numpy batches: the only module that imports torch."""
from __future__ import annotations

import os

# Before torch loads OpenMP: idle intra-op threads sleep instead of spinning. The model
# shares the CPU with the Python steps and the frontends, and spinning threads took it
# from them (calibrator 1.5 -> 4.5 ms per request on 2 cores; docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402
from typing import Sequence

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .contract import TOKEN_RANGE_ERROR  # noqa: E402
from .errors import InputError  # noqa: E402


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class ModelRunner:
    """Loads a TorchScript model once and runs it without autograd."""

    def __init__(self, model_path: Path | str, device: str = "auto", num_threads: int | None = None) -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = pick_device(device)
        self.module = torch.jit.load(str(model_path), map_location=self.device).eval()

    def __call__(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(array)).to(self.device) for array in inputs]
        try:
            with torch.inference_mode():
                output = self.module(*tensors)
        except (RuntimeError, torch.jit.Error) as error:  # TorchScript wraps what the model raises
            # Ours (tce/trainer/modeling.py), or torch's embedding lookup in a model.pt from elsewhere (CPU).
            if TOKEN_RANGE_ERROR in str(error) or "index out of range in self" in str(error):
                raise InputError("input_ids", TOKEN_RANGE_ERROR) from None
            raise
        return output.float().cpu().numpy()
