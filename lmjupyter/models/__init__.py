"""Builders for tiny random-weight models (tests, demos, benchmarks)."""
