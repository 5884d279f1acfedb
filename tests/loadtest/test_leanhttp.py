"""The lean load-generator client against a tiny real asyncio HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from loadtest.leanhttp import LeanConnection, LeanHTTPError, build_request

RESPONSES = {
    b"/len": b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\nRetry-After: 1\r\n\r\n{"ok": true}',
    b"/chunked": b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'4\r\n{"a"\r\n4\r\n: 1}\r\n0\r\n\r\n',
    b"/close": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[int]]]:
    """An HTTP/1.1 server answering canned responses by path; counts connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        path = b""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                path = head.split(b" ")[1]
                if path == b"/hang":
                    break  # never answers; the client's timeout must fire
                writer.write(RESPONSES[path])
                await writer.drain()
                if path == b"/close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if path != b"/hang":
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield f"http://127.0.0.1:{port}", connections


def _req(url: str, path: str) -> bytes:
    return build_request(url, path, b"{}", "application/json")


async def test_keeps_the_connection_open_and_reads_both_framings(
    server: tuple[str, list[int]],
) -> None:
    url, connections = server
    conn = LeanConnection(url, timeout_s=5.0)
    first = await conn.request(_req(url, "/len"))
    assert (first.status_code, first.json(), first.headers["retry-after"]) == (
        200,
        {"ok": True},
        "1",
    )
    second = await conn.request(_req(url, "/chunked"))
    assert second.status_code == 503 and second.json() == {"a": 1}
    assert len(connections) == 1  # both on one kept-open connection
    await conn.request(_req(url, "/close"))
    await conn.request(_req(url, "/len"))
    assert len(connections) == 2  # the server closed it, so the client reconnected
    await conn.close()


async def test_timeouts_and_refused_connections_are_lean_errors(
    server: tuple[str, list[int]],
) -> None:
    url, _ = server
    conn = LeanConnection(url, timeout_s=0.2)
    with pytest.raises(LeanHTTPError, match="no response within"):
        await conn.request(_req(url, "/hang"))
    refused = LeanConnection("http://127.0.0.1:9", timeout_s=1.0)
    with pytest.raises(LeanHTTPError):
        await refused.request(_req("http://127.0.0.1:9", "/len"))
    with pytest.raises(ValueError, match="plain http"):
        LeanConnection("https://example.org", timeout_s=1.0)


def test_request_bytes() -> None:
    raw = build_request("http://127.0.0.1:8000", "/predict", b"abc", "image/png")
    assert raw.startswith(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Length: 3\r\n" in raw and raw.endswith(b"\r\n\r\nabc")
