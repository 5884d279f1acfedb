"""Helpers shared by the tests (a small real model repository)."""
