"""Serving: the embedded Triton server, its gateway and admin key, the demo and load test."""
