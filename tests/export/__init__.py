"""Tests of the offline stage."""
