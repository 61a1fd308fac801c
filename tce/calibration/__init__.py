"""Calibration: fit, apply, report and publish lookup tables."""
