"""Shedding at the door (max_in_flight, a saturated loop) and deadlines counted from arrival."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from service.http.app import create_app
from service.http.uvicorn_hooks import ARRIVAL_KEY
from service.inference.batcher import BatchResult, DynamicBatcher
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.support.held import held_app

pytestmark = pytest.mark.timeout(60)

TENSOR = {"tensor": np.zeros((1, 8, 8)).tolist()}
TENSOR_BODY = json.dumps(TENSOR).encode()


async def post_counting_reads(
    app: Any, body: bytes, waited_s: float = 0.0
) -> tuple[int, dict[bytes, bytes], dict[str, Any], int]:
    """POST ``body`` to /predict straight through ASGI, stamped as arrived ``waited_s`` ago;
    returns the status, headers, JSON answer and how many times the app called ``receive``."""
    reads = 0
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # then, as a server does: nothing until the client leaves
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    headers = [(b"host", b"test"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("test", 80),
        "state": {ARRIVAL_KEY: time.monotonic() - waited_s},
    }  # fmt: skip
    await app(scope, receive, send)
    answer = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(answer), reads


async def test_max_in_flight_sheds_at_once_and_recovers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_in_flight=2, retry_after_s=3)
    async with held_app(settings, max_batch_size=1, max_queue_size=64) as held:
        c = held.client
        first = asyncio.create_task(c.post("/predict", json=TENSOR))
        await held.entered.wait()
        second = asyncio.create_task(c.post("/predict", json=TENSOR))
        await held.until_queued(1)
        # Two in flight: the third is refused even though the queue has room, unread.
        status, headers, answer, reads = await post_counting_reads(held.app, TENSOR_BODY)
        assert status == 503 and headers[b"retry-after"] == b"3"
        assert answer["error"]["code"] == "overloaded" and reads == 0
        held.release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert (await c.post("/predict", json=TENSOR)).status_code == 200


async def test_deadline_504_carries_retry_after(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(request_timeout_ms=0.001, retry_after_s=4))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
    assert r.status_code == 504 and r.headers["retry-after"] == "4"


def stamped(app: Any, waited_s: float) -> Any:
    """``app`` behind a wrapper that stamps each request as arrived ``waited_s`` ago (as uvicorn
    with service.http.uvicorn_hooks does), so the request looks as if it waited that long for the
    loop."""

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("state", {})[ARRIVAL_KEY] = time.monotonic() - waited_s
        await app(scope, receive, send)

    return wrapper


async def test_saturated_loop_sheds_at_the_gate_without_reading_the_body(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(max_loop_wait_ms=50, retry_after_s=2))
    async with app.router.lifespan_context(app):
        status, headers, answer, reads = await post_counting_reads(app, TENSOR_BODY, 0.2)
        assert status == 503 and headers[b"retry-after"] == b"2" and reads == 0
        assert answer["error"]["code"] == "overloaded"
        assert "event loop" in answer["error"]["message"]
        # the same request, fresh, is read and answered
        status, _, _, reads = await post_counting_reads(app, TENSOR_BODY, 0.0)
        assert status == 200 and reads >= 1
        late = httpx.ASGITransport(app=stamped(app, 0.2))
        async with httpx.AsyncClient(transport=late, base_url="http://test") as c:
            # Only /predict is gated: health and metrics still answer on a busy loop.
            assert (await c.get("/healthz")).status_code == 200
        fresh = httpx.ASGITransport(app=stamped(app, 0.0))
        async with httpx.AsyncClient(transport=fresh, base_url="http://test") as c:
            assert (await c.post("/predict", json=TENSOR)).status_code == 200
            metrics = (await c.get("/metrics")).text
    assert 'rocketserve_requests_total{model="unknown",status="503",version=""} 1.0' in metrics


async def test_deadline_counts_from_arrival_not_from_the_route(
    make_settings: Callable[..., Settings],
) -> None:
    # Admitted (waited 0.3 s < 10 s), but the 0.2 s deadline from arrival is already gone.
    app = create_app(make_settings(request_timeout_ms=200, max_loop_wait_ms=10_000))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=stamped(app, 0.3))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
    assert r.status_code == 504 and "retry-after" in r.headers


class LateBatcher:
    """Answers correctly, but only after the request deadline (the loop came back late)."""

    def __init__(self, inner: DynamicBatcher) -> None:
        self.inner = inner

    async def submit(
        self, batch: np.ndarray, deadline: float, abandon: object = None
    ) -> BatchResult:
        result = await self.inner.submit(batch, None)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
        return result


async def test_an_answer_ready_after_the_deadline_is_504_not_200(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(request_timeout_ms=100, retry_after_s=5)
    registry = ModelRegistry.load(settings, ServiceMetrics())
    served = registry.resolve(None)
    app = create_app(settings, registry=registry)
    async with app.router.lifespan_context(app):
        served.batcher = LateBatcher(served.batcher)  # type: ignore[assignment]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
        served.batcher = served.batcher.inner  # type: ignore[attr-defined]
    assert r.status_code == 504 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "deadline_exceeded"


async def test_a_bug_in_predict_is_a_json_500_not_a_traceback(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):

        def broken(_: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(app.state.service.registry, "resolve", broken)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/predict", json=TENSOR)
            assert r.status_code == 500
            assert r.json() == {
                "error": {"code": "internal_error", "message": "internal server error"}
            }
            assert app.state.service.predicting == 0
            assert (await c.get("/healthz")).status_code == 200
