"""Shared pytest fixtures: a small real model repository built without torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.onnx_repo import build_digits_model

# prometheus-client reads it once, at import: set in a developer's shell it would make every app
# of the tests share one set of metric files (and so would the servers they start).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


@pytest.fixture(scope="session")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two real ONNX models on digits: 'digits-logreg' (v1, v2), 'digits-slow'.

    Treat it as read-only: it is shared by the whole session. Copy it to modify it.
    """
    repo = tmp_path_factory.mktemp("repo")
    build_digits_model(repo, "digits-logreg", version=1)
    build_digits_model(repo, "digits-logreg", version=2)
    build_digits_model(repo, "digits-slow", version=1, hidden=8)
    return repo
