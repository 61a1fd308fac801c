"""Triton Python model for the calibrator step: a thin shell over tce_backends."""
from tce_backends.triton.models import CalibratorModel as TritonPythonModel  # noqa: F401
