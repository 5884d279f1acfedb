"""service.http.uvicorn_hooks: arrival stamps on a real uvicorn server, streamed answers intact."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from service.http.uvicorn_hooks import ARRIVAL_KEY, arrival_protocol

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def served(app: Any, sock: socket.socket) -> AsyncIterator[uvicorn.Server]:
    """A real uvicorn server with the service's protocol on ``sock`` (bound), until exit."""
    config = uvicorn.Config(app, http=arrival_protocol(), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await serving


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
    port = sock.getsockname()[1]
    async with served(app, sock):
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
    (stamp, handled), (second, _) = seen
    assert isinstance(stamp, float) and isinstance(second, float)
    # The deadline clock starts when the request began arriving, not when the route ran.
    assert before <= stamp and handled - stamp >= 0.25
    assert second > handled


async def test_real_uvicorn_answers_through_the_protocol_streamed_or_not() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/slow":
            await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"done"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    async with served(app, sock):
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        status = await reader.readline()
        headers_at = time.monotonic() - t0
        rest = await reader.readuntil(b"0\r\n\r\n")  # the end of a chunked body
        # The headers went out before the body that came 0.3 s later.
        assert status.startswith(b"HTTP/1.1 200") and headers_at < 0.2
        assert b"transfer-encoding: chunked" in rest and b"done" in rest
        writer.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        assert b"done" in await reader.readuntil(b"0\r\n\r\n")
        writer.close()


def test_missing_uvicorn_hooks_fall_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from uvicorn.protocols.http import httptools_impl

    from service.http.uvicorn_hooks import PROTOCOL_PATH, protocol_hooks_missing

    assert protocol_hooks_missing() is None and arrival_protocol() == PROTOCOL_PATH
    monkeypatch.delattr(httptools_impl.HttpToolsProtocol, "on_message_begin")
    with caplog.at_level("WARNING", logger="service.http.uvicorn_hooks"):
        assert arrival_protocol() == "auto"
    [warning] = caplog.records
    assert "arrival stamps off" in warning.message and "on_message_begin" in warning.message


@pytest.mark.parametrize("bound_as", ["workers", "single"])
async def test_every_connection_has_nagle_off_however_the_port_was_bound(bound_as: str) -> None:
    """``--workers N`` binds with ``socket.socket()`` (proto 0), for which asyncio leaves Nagle
    on; an answer written as head then body then waited for the client's delayed ACK (+40 ms).
    The protocol turns it off itself."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    if bound_as == "workers":
        sock = socket.socket(family=socket.AF_INET)  # as uvicorn's Config.bind_socket does
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    async with served(app, sock) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
        assert (await client.get(url)).status_code == 204
        connections = list(server.server_state.connections)
        assert connections, "the keep-alive connection is still open"
        for protocol in connections:
            accepted = protocol.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
