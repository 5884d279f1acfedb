"""Tests of deploy/, the Dockerfile and the compose files."""
