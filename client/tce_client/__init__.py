"""Client SDK for the calibrated multimodal ensemble on Triton."""
from .client import DEFAULT_MODEL, AsyncCalibratedClassifierClient, CalibratedClassifierClient
from .errors import (
                     ClientError,
                     InferenceError,
                     ModelNotReadyError,
                     RecordError,
                     RequestTimeoutError,
                     ServerBusyError,
                     ServerUnavailableError,
)
from .results import Prediction, TaskResult, predictions_to_frame
from .schema import EnsembleSchema, UnusedColumnsWarning
from .seed_format import to_seed_csv, to_seed_json

__all__ = [
    "DEFAULT_MODEL", "AsyncCalibratedClassifierClient", "CalibratedClassifierClient", "ClientError",
    "EnsembleSchema", "InferenceError", "ModelNotReadyError", "Prediction", "RecordError", "RequestTimeoutError",
    "ServerBusyError", "ServerUnavailableError", "TaskResult", "UnusedColumnsWarning", "predictions_to_frame",
    "to_seed_csv", "to_seed_json",
]
