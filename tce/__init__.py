"""The ``tce`` command line and everything it runs outside Triton, in layers
(docs/architecture.md): ``cli`` and ``commands`` parse and print; ``jobs`` orchestrate;
``serving`` (the embedded server and its supervisor), ``seed`` (import),
``repository`` (the builder) and ``trainer`` (the demo model) do one thing each;
``models`` and ``lib`` are the tooling and library they share. The packages beside it
(``tce_backends``, ``tce_client``, ``tce_gateway``, ``tce_sagemaker``) import nothing
of it."""
