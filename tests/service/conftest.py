"""Fixtures of the service tests: settings on the shared digits repository, an in-process client."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.contract.model_card import model_file, read_manifest
from service.http.app import create_app
from service.inference.predictions import softmax
from service.settings import ENV_PREFIX, Settings
from tests.support.onnx_repo import digits_uint8_split


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode a Pillow image."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Digits test images as uint8 [N, 8, 8] and their labels."""
    _, x_te, _, y_te = digits_uint8_split()
    return x_te[..., 0], y_te


@pytest.fixture
def make_settings(digits_repo: Path) -> Callable[..., Settings]:
    """Settings on the shared digits repository, with overrides."""

    def make(**overrides: Any) -> Settings:
        # Every version served: the tests pick versions of the two-version digits-logreg.
        base: dict[str, Any] = {
            "model_repository": digits_repo,
            "warmup_runs": 1,
            "version_policy": "all",
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process ASGI client of an app on the digits repository, lifespan included."""
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


class Reference:
    """ONNX Runtime alone on one model version: the answer every served request must equal."""

    def __init__(self, repo: Path, name: str, version: int) -> None:
        self.card = read_manifest(repo / name)
        self.session = ort.InferenceSession(
            str(model_file(repo / name, version)), providers=["CPUExecutionProvider"]
        )

    def probs(self, batch: np.ndarray) -> np.ndarray:
        """Softmax of the logits of ``batch`` [N, C, H, W] run on its own."""
        logits = self.session.run(None, {self.card.input.name: batch})[0]
        return softmax(logits)


@pytest.fixture(scope="session")
def reference(digits_repo: Path) -> Callable[[str, int], Reference]:
    """Reference(name, version) factory."""
    return lambda name, version: Reference(digits_repo, name, version)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() writes CLI options into the environment: keep that inside the test."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            del os.environ[key]
