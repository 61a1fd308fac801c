"""The library layer: frames (tables, parts, progress), labels, metrics, comparison statistics,
plots, calibration fitting and the demo data. It orchestrates nothing and imports only the
serving packages (tce_backends, tce_client) below it."""
