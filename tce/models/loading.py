"""Loading a ``model.pt``: a damaged or foreign file is one line naming it, not a traceback.

Every place that loads a bundle's model for build or import goes through
``load_torchscript``, so the check happens where the model is first read, before
anything is written.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tce_backends.errors import BundleError

_MINIZ_NOTE = ". This is an internal miniz error"  # torch's long advice after the actual problem


def load_problem(error: BaseException) -> str:
    """The part of a ``torch.jit.load`` error that says what is wrong, on one line."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.split(_MINIZ_NOTE, 1)[0].rstrip(".")
    return text[:300]


def load_torchscript(path: Path | str, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load(path)``, or ``BundleError('model', ...)`` naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise BundleError("model", f"missing {path}")
    try:
        return torch.jit.load(str(path), map_location=map_location)
    except Exception as error:  # noqa: BLE001 - RuntimeError, ValueError, torch.jit.Error: all say "not loadable"
        hint = "it holds weights, not a TorchScript model: export it with torch.jit.script or trace and " \
            "torch.jit.save" if "constants.pkl" in str(error) else \
            "the file is damaged or was not written by torch.jit.save: copy or export it again"
        raise BundleError("model", f"{path} is not a loadable TorchScript model ({load_problem(error)}); "
                                   f"{hint}") from None
