"""Tooling for TorchScript models from anywhere: the length-aware trimming wrapper and the check
that a model returns per-task probabilities. Used by the repository builder, seed import and
the trainer."""
