"""Triton Python model for the text_tokenizer step: a thin shell over tce_backends."""
from tce_backends.triton.models import TextTokenizerModel as TritonPythonModel  # noqa: F401
