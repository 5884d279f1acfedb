"""Tests of the load tests and the serving benchmark."""
