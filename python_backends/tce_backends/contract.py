"""Names of every tensor that crosses a step boundary, in one place.

The ensemble's caller-facing inputs are the raw text fields (one string each),
``numeric_features`` (float64, NaN = missing) and ``categorical_features``
(strings, "" = missing). Its outputs per task are ``<task>_raw``,
``<task>_calibrated`` and ``<task>_label``, plus ``calibration_version`` and
``calibration_fallback``.

The model step's tensors use the ``<name>__<index>`` convention that Triton's
libtorch backend maps onto ``forward`` arguments by position, so the Python and
libtorch hosts of ``model.pt`` share one set of names.
"""
from __future__ import annotations

from typing import Sequence

# Model-repository step names, in ensemble order (a chain: each step feeds the next).
PREPROCESSOR = "preprocessor"
MULTIMODAL_MODEL = "multimodal_model"
CALIBRATOR = "calibrator"
DEFAULT_ENSEMBLE = "calibrated_ensemble"

NUMERIC_FEATURES = "numeric_features"
CATEGORICAL_FEATURES = "categorical_features"
TABULAR = "tabular"
PROBABILITIES = "probabilities__0"
CALIBRATION_VERSION = "calibration_version"
CALIBRATION_FALLBACK = "calibration_fallback"

# What model.pt raises for a token id outside its vocabulary (tce/modeling.py); the
# Python host turns it into an invalid-argument error naming the input.
TOKEN_RANGE_ERROR = "token ids must be in [0, vocab_size)"

RESERVED_NAMES = {NUMERIC_FEATURES, CATEGORICAL_FEATURES, TABULAR, CALIBRATION_VERSION, CALIBRATION_FALLBACK}


def token_tensor_names(text_fields: Sequence[str]) -> list[tuple[str, str]]:
    """(input_ids, attention_mask) tensor names per text field, in field order."""
    names = []
    for i, field in enumerate(text_fields):
        names.append((f"{field}_input_ids__{2 * i}", f"{field}_attention_mask__{2 * i + 1}"))
    return names


def tabular_tensor_name(text_fields: Sequence[str]) -> str:
    """The model's tabular input comes after every text field's two tensors."""
    return f"{TABULAR}__{2 * len(text_fields)}"


def raw_output(task: str) -> str:
    return f"{task}_raw"


def calibrated_output(task: str) -> str:
    return f"{task}_calibrated"


def label_output(task: str) -> str:
    return f"{task}_label"
