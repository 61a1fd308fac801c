"""Code the Triton Python steps run, testable without Triton.

Only ``model_runner`` imports torch; every other module needs numpy (and the
``tokenizers`` package for text).
"""
