"""A lean asyncio HTTP/1.1 keep-alive client for pre-encoded requests: cheap load generation.

httpx spends more CPU per request than the service does (~1.5-2 ms against ~1 ms on the bench
machine), so on a 2-core machine it, not the service, would set the ceiling. This client writes
pre-built request bytes on one kept-open connection and reads a Content-Length (or chunked)
response: ~10x cheaper, leaving the cores to the service under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class LeanHTTPError(Exception):
    """Connection failed, closed early, or the response could not be read."""


@dataclass(frozen=True)
class LeanResponse:
    """Status, lower-cased headers and body of one response."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", errors="replace")


def build_request(
    url: str, path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one ``POST path`` with ``body`` (and ``headers``), keeping the connection
    alive."""
    netloc = urlsplit(url).netloc
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + body


class LeanConnection:
    """One keep-alive connection; reconnects when the server closed it."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"lean client speaks plain http only, not {url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._timeout = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> LeanResponse:
        """Send pre-built request bytes and read the whole response."""
        try:
            return await asyncio.wait_for(self._roundtrip(raw), self._timeout)
        except asyncio.TimeoutError:  # before OSError: TimeoutError is one since Python 3.11
            await self.close()
            raise LeanHTTPError(f"no response within {self._timeout:.1f} s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise LeanHTTPError(f"{type(exc).__name__}: {exc}") from None

    async def _roundtrip(self, raw: bytes) -> LeanResponse:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.read()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return LeanResponse(status, headers, body)

    async def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
