"""ArrivalHttpToolsProtocol: uvicorn's httptools protocol, stamping each request's arrival."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.http.responses import dump_json, error_body
from service.http.uvicorn_hooks import ARRIVAL_KEY, publish_tasks


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP connection (a no-op for other sockets).

    asyncio does this only for sockets whose ``proto`` is IPPROTO_TCP; the listening socket
    uvicorn binds for ``--workers N`` is made with proto 0, so its connections kept Nagle on: an
    answer written in two parts (head, then body) waited for the client's delayed ACK, +40 ms.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# What uvicorn answers, in plain text, to bytes its parser refuses: here the service's JSON error.
INVALID_HTTP = "the request is not valid HTTP/1.1: a malformed request line, header or chunk"
# httptools keeps a request line and headers of any size in memory: a bound, as a proxy's (nginx
# takes 32 KiB by default; a request of this service needs well under 1 KiB).
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 2.0  # after an answer before the request was read: how long the rest is dropped
HEAD_TOO_LARGE = (
    f"the request line and headers are over {MAX_HEAD_BYTES // 1024} KiB: this server takes no more"
)


class ArrivalHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol: each scope carries its arrival instant (deadlines count from it),
    every connection has Nagle off, however uvicorn bound the port, a request head is bounded
    (431 past ``MAX_HEAD_BYTES``), and bytes that are no HTTP get the service's JSON error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        publish_tasks(self.tasks)
        self._head_bytes = 0  # read of the current message's request line and headers
        self._in_head = False
        self._ended_here = False  # a message ended in the chunk being read
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered, closing: what the client still sends is dropped unread
        self._ended_here = False
        super().data_received(data)
        # A chunk read while a head is incomplete went to that head, unless a message ended in
        # it (a pipelined request after a body: its share is unknown, and the next chunk counts)
        if self._in_head and not self._ended_here and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.logger.warning("request head over %d bytes: refused", MAX_HEAD_BYTES)
                self._refuse(431, "headers_too_large", HEAD_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._ended_here = True
        super().on_message_complete()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][ARRIVAL_KEY] = time.monotonic()
        self._head_bytes = 0
        self._in_head = True

    def send_400_response(self, msg: str) -> None:
        """The answer to bytes the HTTP parser refused (before any app saw them), as every other
        client mistake is answered: a JSON error; then the connection is closed."""
        self._refuse(400, "invalid_http", INVALID_HTTP)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with the JSON error before any app has the request; close."""
        body = dump_json(error_body(code, message))
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join([*head, body]))
        # A close with the client's bytes still unread makes the kernel reset the connection,
        # and the client may lose the answer: close our side, take (and drop) what it still
        # sends for a moment, then close, as nginx's lingering close does.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
