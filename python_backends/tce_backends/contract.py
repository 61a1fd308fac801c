"""Names of every tensor that crosses a step boundary, in one place.

The ensemble's caller-facing inputs are the raw text fields (one string each),
``numeric_features`` (float64, NaN = missing) and ``categorical_features``
(strings, "" = missing). Its outputs per task are ``<task>_raw``,
``<task>_calibrated``, ``<task>_label`` and ``<task>_decision`` (the action the
calibration's decision policy chose, else the label), plus ``calibration_version``,
``calibration_fallback`` and ``release`` (the release number that answered, as text).

Steps speak plain names (``<field>_input_ids``, ``tabular``, ``probabilities``).
Only the model step uses Triton's libtorch convention ``<name>__<index>``, which
maps tensors onto ``forward`` arguments by position; the ensemble's
``input_map``/``output_map`` rename at that one step (``tce_backends.graph``), so
the Python and libtorch hosts of ``model.pt`` share one config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

DEFAULT_ENSEMBLE = "calibrated_ensemble"  # the one home of the ensemble's default name
# The ensemble config parameter holding the schema a client reads (tce_client.schema).
SCHEMA_PARAMETER = "tce_schema"
# The ensemble config parameter holding the bundle's reference score distribution (JSON of
# tce_backends.score_metrics.ReferenceScores), beside the live histograms; absent without one.
SCORE_REFERENCE_PARAMETER = "tce_score_reference"
# The request parameter (true) that marks the health canary's requests (tce_backends.canary):
# the calibrator counts their rows apart from every other metric. The gateway never forwards it.
CANARY_PARAMETER = "tce_canary"
# Triton's words for a request it refused without running it (dynamic batcher queue policy):
# the server works, it is busy; a retry is safe.
QUEUE_REFUSALS = ("Exceeds maximum queue size", "Request timeout expired")

NUMERIC_FEATURES = "numeric_features"
CATEGORICAL_FEATURES = "categorical_features"
TABULAR = "tabular"
PROBABILITIES = "probabilities"
CALIBRATION_VERSION = "calibration_version"
CALIBRATION_FALLBACK = "calibration_fallback"
RELEASE = "release"  # output: the release (one bundle's pinned step versions) that answered

# The repository's releases and which one serves (tce.repository.releases writes it).
RELEASES_FILE = "releases.json"
# In a calibrator version directory: which release that version belongs to and the model
# fingerprint of that release ({"release": n, "bundle": ..., "model_fingerprint": ...}).
RELEASE_INFO_FILE = "release.json"


def release_model_name(ensemble: str, release: int) -> str:
    """The ensemble model that pins one release's step versions, for callers who name a release."""
    return f"{ensemble}-release-{release}"


# What model.pt raises for a token id outside its vocabulary (tce/trainer/modeling.py); the
# Python host turns it into an invalid-argument error naming the input.
TOKEN_RANGE_ERROR = "token ids must be in [0, vocab_size)"

RESERVED_NAMES = {NUMERIC_FEATURES, CATEGORICAL_FEATURES, TABULAR, PROBABILITIES, CALIBRATION_VERSION,
                  CALIBRATION_FALLBACK, RELEASE}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as a Triton config declares it (``dims`` without the batch dimension)."""

    name: str
    data_type: str  # Triton's enum name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def token_names(field: str) -> tuple[str, str]:
    """(input_ids, attention_mask) tensor names of one text field."""
    return f"{field}_input_ids", f"{field}_attention_mask"


def model_input_names(text_fields: Sequence[str]) -> tuple[str, ...]:
    """``model.pt``'s forward arguments in order: each text field's two tensors, then tabular."""
    return (*(name for field in text_fields for name in token_names(field)), TABULAR)


def positional(names: Sequence[str]) -> tuple[str, ...]:
    """Triton's libtorch names for forward arguments (or outputs) by position."""
    return tuple(f"{name}__{index}" for index, name in enumerate(names))


def plain(name: str) -> str:
    """The ensemble tensor behind a step tensor: positional names lose their ``__<index>``."""
    return re.sub(r"__\d+$", "", name)


def task_output_names(task: str) -> tuple[str, str, str]:
    """(raw, calibrated, label) output names of one task."""
    return f"{task}_raw", f"{task}_calibrated", f"{task}_label"


def decision_output_name(task: str) -> str:
    """The output holding one task's decision (``tce_backends.decisions``)."""
    return f"{task}_decision"
