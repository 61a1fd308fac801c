"""Build: the demo model and data, and the Triton model repository a bundle becomes."""
