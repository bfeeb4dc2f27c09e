"""Benchmarks of what scoring costs: ``make bench`` / ``python -m benchmarks.run`` (see README.md here)."""
