"""Triton Python model for the preprocessor step: a thin shell over tce_backends."""
from tce_backends.triton.models import PreprocessorModel as TritonPythonModel  # noqa: F401
