"""Benchmarks (`make bench`): print throughput figures; never asserted in tests."""
