"""Benchmarks for sk-functions: cold start and per-request overhead (see bench/README.md)."""
