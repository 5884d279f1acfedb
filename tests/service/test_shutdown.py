"""SIGTERM under load loses nothing: not ready at once, accepted requests answered, then exit."""

from __future__ import annotations

import asyncio
import io
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.http.app import create_app
from service.settings import Settings
from tests.support.server import free_port, running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

IN_FLIGHT = 64


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def test_sigterm_answers_every_accepted_request(digits_repo: Path) -> None:
    env = {"ROCKETSERVE_SHUTDOWN_GRACE_S": "10", "ROCKETSERVE_LOG_LEVEL": "warning"}
    with running_service(digits_repo, env) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        # 64 requests accepted and in flight: headers and half of each body sent, the rest
        # held back by the client until after the signal.
        clients = []
        for i in range(IN_FLIGHT):
            body = png(i * 3)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body[: len(body) // 2]
            )
            await writer.drain()
            clients.append((reader, writer, body[len(body) // 2 :]))
        await asyncio.sleep(0.5)  # every request is being read by the service
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # New connections are refused from the moment the listener closes.
        refused = False
        for _ in range(50):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
            except OSError:
                refused = True
                break
            await asyncio.sleep(0.05)
        assert refused, "the service still accepted new connections after SIGTERM"
        for _, writer, rest in clients:
            writer.write(rest)
            await writer.drain()
        answers = []
        for reader, writer, _ in clients:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answers.append((head[9:12], await reader.readexactly(length)))
            writer.close()
        statuses = [status for status, _ in answers]
        print(f"SIGTERM with {IN_FLIGHT} requests in flight: {statuses.count(b'200')} answered 200")
        assert statuses == [b"200"] * IN_FLIGHT, answers[:3]
        assert all(b'"predictions"' in payload for _, payload in answers)
        code = await asyncio.to_thread(proc.wait, 15)
        assert code in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 10 + 2  # within the grace period


async def test_readyz_turns_503_at_the_signal(make_settings: Callable[..., Settings]) -> None:
    seen: list[int] = []

    def server_handler(signum: int, _: object) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        app = create_app(make_settings())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                assert (await c.get("/readyz")).status_code == 200
                signal.raise_signal(signal.SIGTERM)
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
                # Requests already on their way are still served.
                tensor = {"tensor": np.zeros((1, 8, 8)).tolist()}
                assert (await c.post("/predict", json=tensor)).status_code == 200
        assert seen == [signal.SIGTERM]  # the server's own handler ran too
        assert signal.getsignal(signal.SIGTERM) is server_handler  # restored on exit
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_sigterm_drains_grpc_beside_http_and_answers_every_stream_request(
    digits_repo: Path,
) -> None:
    """From the signal on, gRPC takes no new call while uvicorn still drains an HTTP request
    (the two drain side by side, within one grace period, not one after the other); an open
    stream answers what it had read, and each request it reads afterwards is answered that the
    server is shutting down, rather than dropped."""
    grpc_port = free_port()
    env = {
        "ROCKETSERVE_GRPC_PORT": str(grpc_port),
        "ROCKETSERVE_SHUTDOWN_GRACE_S": "10",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    target = f"127.0.0.1:{grpc_port}"
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)

    def one_input() -> list[grpcclient.InferInput]:
        inp = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(x)
        return [inp]

    with running_service(digits_repo, env) as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        stream = grpcclient.InferenceServerClient(target)
        stream.start_stream(callback=lambda result, error: answers.put((result, error)))
        stream.async_stream_infer("digits-logreg", one_input(), request_id="before")
        result, error = await asyncio.to_thread(answers.get, True, 10)
        assert error is None and result.get_response().id == "before"  # type: ignore[attr-defined]
        # an HTTP request accepted and held open: uvicorn drains until it is answered
        body = png(7)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the gRPC server sees the drain within 0.1 s

        stream.async_stream_infer("digits-logreg", one_input(), request_id="after")
        result, error = await asyncio.to_thread(answers.get, True, 10)
        assert result is None and "shutting down" in str(error), error
        fresh = grpcclient.InferenceServerClient(target)
        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(fresh.infer, "digits-logreg", one_input())
        fresh.close()
        assert "UNAVAILABLE" in str(caught.value.status()), caught.value
        stream.stop_stream()
        stream.close()

        writer.write(body[10:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        code = await asyncio.to_thread(proc.wait, 15)
        assert code in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 10 + 2  # one grace period, not two
