"""Build-time tooling: the reference model, the demo bundle, the repository
builder, the embedded server launcher and the ``tce`` command."""
