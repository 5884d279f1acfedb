"""Shedding at the door: max_in_flight refuses before reading the body; 504s have Retry-After."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.batching import DynamicBatcher
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry
from service.settings import Settings

pytestmark = pytest.mark.timeout(60)

TENSOR = {"tensor": np.zeros((1, 8, 8)).tolist()}


async def test_max_in_flight_sheds_at_once_and_recovers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_in_flight=2, retry_after_s=3)
    registry = ModelRegistry.load(settings, ServiceMetrics())
    served = registry.resolve(None)
    release = threading.Event()
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    def held(batch: np.ndarray) -> np.ndarray:
        loop.call_soon_threadsafe(entered.set)
        assert release.wait(20)
        return np.full((len(batch), 10), 0.1, dtype=np.float32)

    served.batcher = DynamicBatcher(held, max_batch_size=1, max_queue_size=64)
    app = create_app(settings, registry=registry)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                first = asyncio.create_task(c.post("/predict", json=TENSOR))
                await entered.wait()
                second = asyncio.create_task(c.post("/predict", json=TENSOR))
                for _ in range(1000):
                    if served.batcher.queue_depth == 1:
                        break
                    await asyncio.sleep(0)
                # Two in flight: the third is refused even though the queue has room.
                r = await c.post("/predict", content=b"not even read")
                assert r.status_code == 503 and r.headers["retry-after"] == "3"
                assert r.json()["error"]["code"] == "overloaded"
                release.set()
                assert (await first).status_code == 200
                assert (await second).status_code == 200
                assert (await c.post("/predict", json=TENSOR)).status_code == 200
    finally:
        release.set()


async def test_deadline_504_carries_retry_after(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(request_timeout_ms=0.001, retry_after_s=4))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
    assert r.status_code == 504 and r.headers["retry-after"] == "4"
