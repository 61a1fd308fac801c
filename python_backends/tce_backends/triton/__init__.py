"""Triton Python-backend glue over ``tce_backends.steps``.

Imports ``triton_python_backend_utils``, which exists only inside Triton's Python
stub; everything else in ``tce_backends`` is testable without Triton.
"""
