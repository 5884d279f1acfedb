"""Slow or vanishing clients cannot hold the service: body timeout, in-flight cap, dropped waits."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import IN_FLIGHT_PER_CORE, Settings
from tests.service.test_endpoints import samples
from tests.support.held import held_app
from tests.support.server import running_service

pytestmark = pytest.mark.timeout(60)

TENSOR = {"tensor": np.zeros((1, 8, 8)).tolist()}


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, "PNG")
    return buf.getvalue()


async def test_slowloris_gets_408_and_its_slot_back(digits_repo: Path) -> None:
    env = {
        "ROCKETSERVE_BODY_READ_TIMEOUT_S": "1",
        "ROCKETSERVE_MAX_IN_FLIGHT": "1",  # the slow client holds the only slot until refused
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(digits_repo, env) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = png()
        writer.write(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        t0 = time.monotonic()
        answer = b""
        for byte in body:  # a byte every 0.1 s: the whole body would take seconds
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.1)
            except TimeoutError:
                continue
            break
        waited = time.monotonic() - t0
        answer += await asyncio.wait_for(reader.read(), 5)  # the rest, until the server closes
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"connection: close" in head.lower()
        assert b'"code":"body_timeout"' in payload
        assert 0.9 < waited < 3.0
        writer.close()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.post("/predict", content=body, headers={"content-type": "image/png"})
            assert r.status_code == 200  # the slot is free again
            metrics = samples((await http.get("/metrics")).text)
        key = (
            "rocketserve_requests_total",
            (("model", "unknown"), ("status", "408"), ("version", "")),
        )
        assert metrics[key] == 1


def test_in_flight_cap_is_on_by_default_and_sized_from_the_machine(digits_repo: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings(model_repository=digits_repo).in_flight_limit == IN_FLIGHT_PER_CORE * cores
    assert Settings(model_repository=digits_repo, max_in_flight=0).in_flight_limit == 0
    assert Settings(model_repository=digits_repo, max_in_flight=7).in_flight_limit == 7


class Client:
    """One /predict call driven by hand through the app's ASGI interface: the test decides
    when its client disconnects."""

    def __init__(self, app: Any, body: bytes) -> None:
        self.app, self.body = app, body
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.calls = 0

    async def receive(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def run(self) -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "state": {},
        }
        await self.app(scope, self.receive, self.send)


@pytest.mark.parametrize("stage", ["queued", "running"])
async def test_a_client_that_leaves_while_waiting_frees_its_slot(
    make_settings: Callable[..., Settings], stage: str
) -> None:
    settings = make_settings(max_batch_size=1, max_inputs_per_request=1)
    async with held_app(settings, max_batch_size=1, max_queue_delay_s=0.0) as held:
        app = held.client._transport.app  # type: ignore[attr-defined]
        metrics = app.state.service.metrics
        first = asyncio.create_task(held.client.post("/predict", json=TENSOR))
        await held.entered.wait()  # the first request's batch is running, held
        leaving = Client(app, json.dumps(TENSOR).encode())
        task = asyncio.create_task(leaving.run())
        if stage == "queued":
            await held.until_queued(1)
        else:  # let the first batch go, hold the next one: the leaving request's own batch
            first_release = held.release
            model, running = _held_again(held)
            held.served.batcher._model = model  # type: ignore[attr-defined]
            first_release.set()
            assert (await first).status_code == 200
            await asyncio.wait_for(running.wait(), 5)
        leaving.gone.set()
        await asyncio.wait_for(task, 5)
        assert held.served.batcher.queue_depth == 0  # nothing left holding capacity
        assert leaving.sent[0]["status"] == 499
        gone = metrics.abandoned.labels(held.served.name, str(held.served.version), stage)
        assert gone._value.get() == 1
        served_499 = metrics.requests.labels(held.served.name, str(held.served.version), "499")
        assert served_499._value.get() == 1
        held.release.set()
        if stage == "queued":
            assert (await first).status_code == 200
            # Only the first request's input was ever computed: the leaving one never ran.
            batches = metrics.batch_size.labels(held.served.name, str(held.served.version))
            assert batches._sum.get() == 1
        assert (await held.client.post("/predict", json=TENSOR)).status_code == 200


def _held_again(held: Any) -> tuple[Callable[[np.ndarray], np.ndarray], asyncio.Event]:
    """A model that holds each batch until the new ``held.release`` is set, and an event set
    when a batch reaches it."""
    import threading

    gate = threading.Event()
    held.release = gate
    running = asyncio.Event()
    loop = asyncio.get_running_loop()

    def model(batch: np.ndarray) -> np.ndarray:
        loop.call_soon_threadsafe(running.set)
        assert gate.wait(20)
        return np.full((len(batch), 10), 0.1, dtype=np.float32)

    return model, running
