"""Benchmarks that report figures (DESIGN §13); timing targets live here, never in tests."""
