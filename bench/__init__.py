"""Benchmarks: run as modules, e.g. `uv run python -m bench.features`."""
