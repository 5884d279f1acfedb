"""Overload over HTTP: a full queue answers 503 with Retry-After at once, a passed deadline 504."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from service.http.app import create_app
from service.settings import Settings
from tests.support.held import held_app

pytestmark = pytest.mark.timeout(60)

TENSOR = {"tensor": np.zeros((1, 8, 8)).tolist()}


async def test_full_queue_is_503_with_retry_after_and_recovers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        max_batch_size=1, max_queue_size=1, max_inputs_per_request=1, retry_after_s=2
    )
    async with held_app(settings, max_batch_size=1, max_queue_size=1, retry_after_s=2) as held:
        c = held.client
        running = asyncio.create_task(c.post("/predict", json=TENSOR))
        await held.entered.wait()  # the first request occupies the model
        queued = asyncio.create_task(c.post("/predict", json=TENSOR))
        await held.until_queued(1)
        r = await c.post("/predict", json=TENSOR)  # no room: refused at once
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "queue_full"
        held.release.set()
        assert (await running).status_code == 200
        assert (await queued).status_code == 200
        assert (await c.post("/predict", json=TENSOR)).status_code == 200


async def test_deadline_passed_is_504(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(request_timeout_ms=0.001))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
