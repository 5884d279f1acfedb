"""The uvicorn protocol of service.protocol stamps each request's arrival on a real server."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
import uvicorn

from service.protocol import ARRIVAL_KEY, arrival_protocol

pytestmark = pytest.mark.timeout(30)


async def test_real_uvicorn_stamps_arrival_before_the_body_is_complete() -> None:
    seen: list[tuple[Any, float]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        seen.append((scope["state"].get(ARRIVAL_KEY), time.monotonic()))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol = arrival_protocol()
    assert protocol != "auto", "httptools is installed in the dev environment"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=protocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        port = sock.getsockname()[1]
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        before = time.monotonic()
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(0.3)  # the body's second half comes 0.3 s later
        writer.write(b"cd")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 204")
        writer.close()
        async with httpx.AsyncClient() as client:  # a second request on a new connection
            assert (await client.post(f"http://127.0.0.1:{port}/y")).status_code == 204
    finally:
        server.should_exit = True
        await serving
    (stamp, handled), (second, _) = seen
    assert isinstance(stamp, float) and isinstance(second, float)
    # The deadline clock starts when the request began arriving, not when the route ran.
    assert before <= stamp and handled - stamp >= 0.25
    assert second > handled
