"""An in-process app whose default model holds every batch until released, for overload tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from service.http.app import create_app
from service.inference.batcher import DynamicBatcher
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry, ServedModel
from service.settings import Settings


@dataclass
class HeldApp:
    """The client of the app, its default model, and the switches of the held batches."""

    client: httpx.AsyncClient
    app: Any  # the ASGI app behind the client
    served: ServedModel
    entered: asyncio.Event  # set when a batch reaches the model
    release: threading.Event  # set to let every held batch (and later ones) through

    async def until_queued(self, depth: int) -> None:
        """Yield to the loop until ``depth`` inputs wait in the default model's queue."""
        for _ in range(1000):
            if self.served.batcher.queue_depth == depth:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"the queue never held {depth} input(s)")


@asynccontextmanager
async def held_app(settings: Settings, **batcher: Any) -> AsyncIterator[HeldApp]:
    """The app on ``settings`` whose default model answers 0.1 everywhere, but only once
    released; ``batcher`` are the DynamicBatcher arguments of that model. Released on exit."""
    registry = ModelRegistry.load(settings, ServiceMetrics())
    served = registry.resolve(None)
    release = threading.Event()
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def held(batch: np.ndarray) -> np.ndarray:
        loop.call_soon_threadsafe(entered.set)
        assert release.wait(20)
        return np.full((len(batch), 10), 0.1, dtype=np.float32)

    # The loaded batcher's observer stays: the held model's batches show in the app's metrics.
    batcher.setdefault("observer", served.batcher._observer)
    served.batcher = DynamicBatcher(held, **batcher)
    app = create_app(settings, registry=registry)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                yield HeldApp(c, app, served, entered, release)
    finally:
        release.set()
