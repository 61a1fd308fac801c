"""Importing the seeds' artifacts into bundles."""
