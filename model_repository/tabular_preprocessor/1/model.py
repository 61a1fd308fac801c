"""Triton Python model for the tabular_preprocessor step: a thin shell over tce_backends."""
from tce_backends.triton.models import TabularPreprocessorModel as TritonPythonModel  # noqa: F401
