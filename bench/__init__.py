"""Benchmarks (`make bench`, `make bench-smoke`): speed is measured here and reported, never asserted in tests."""
