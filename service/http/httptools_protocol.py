"""ArrivalHttpToolsProtocol: uvicorn's httptools protocol, stamping each request's arrival."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class ArrivalHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol: each scope carries its arrival instant (deadlines count from it),
    and every connection has Nagle off, however uvicorn bound the port."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        publish_tasks(self.tasks)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][ARRIVAL_KEY] = time.monotonic()
