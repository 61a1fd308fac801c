"""Locust load tests of the served ensemble with latency SLOs."""
