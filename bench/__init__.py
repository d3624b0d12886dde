"""Benchmarks; results and the commands that made them are in docs/BENCHMARKS.md."""
