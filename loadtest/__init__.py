"""Load tests and serving benchmarks for the service."""
