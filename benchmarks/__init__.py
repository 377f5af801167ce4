"""Benchmarks: figures printed next to baselines measured in the same run."""
