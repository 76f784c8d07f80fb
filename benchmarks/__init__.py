"""Benchmarks: the project's single source of performance figures (see benchmarks/README.md)."""
