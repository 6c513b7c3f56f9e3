"""Benchmarks: each scenario is measured against a baseline in the same run and reported as a ratio."""
