"""Benchmarks for Longtail: run with `python -m bench.run` (see docs/benchmarks.md)."""
