"""The tests; helpers they share (and benchmarks reuse) are in tests.support."""
