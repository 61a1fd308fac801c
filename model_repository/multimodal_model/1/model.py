"""Triton Python model for the multimodal_model step: a thin shell over tce_backends."""
from tce_backends.triton.models import MultimodalModel as TritonPythonModel  # noqa: F401
