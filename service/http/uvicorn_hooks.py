"""Arrival stamps, the header-holding transport and the uvicorn protocol choice of the service."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from typing import Any

from starlette.types import Scope

# Key in the ASGI scope's "state" (Starlette: ``request.state``) holding the monotonic instant at
# which uvicorn began parsing the request, before the request waits for the event loop.
ARRIVAL_KEY = "rocketserve_arrival"

# uvicorn's set of running request tasks, published by the protocol below (one server per process).
_tasks: set[Any] | None = None


def requests_in_progress() -> int:
    """Requests uvicorn is handling right now, the caller's included; 0 when not known."""
    return len(_tasks) if _tasks is not None else 0


def arrival(scope: Scope) -> float:
    """When the request arrived: uvicorn's stamp if it set one, else now."""
    state = scope.get("state")
    stamp = state.get(ARRIVAL_KEY) if state else None
    return stamp if isinstance(stamp, float) else time.monotonic()


# A held header block is sent with the body only when the body is at most this long; a longer
# body is written after it in a second send(), rather than copied to join them.
JOIN_BODY_BYTES = 64 * 1024


class HeaderHoldingTransport:
    """A transport that holds a response's header block until its body comes, to send both at once.

    uvicorn writes a response's status line and headers, then its body, as two transport writes:
    two send() system calls, two TCP segments and two wake-ups of the client for every answer. A
    write that is a whole header block (``HTTP/...`` up to the blank line) is held here instead;
    the next write goes out joined with it. Nothing stays held past the current event-loop
    iteration (a streamed body that comes later still finds its headers sent), nor past close().
    Everything else is the wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport: Any = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        """Write ``data``, held if it is a header block, joined with what was held if any."""
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= JOIN_BODY_BYTES:
                data = held + data
            else:
                self._transport.write(held)
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close (the wrapped transport flushes its buffer first)."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is held and buffered."""
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


PROTOCOL_PATH = "service.http.httptools_protocol:ArrivalHttpToolsProtocol"


def publish_tasks(tasks: set[Any]) -> None:
    """Called by the protocol: uvicorn's set of running request tasks in this process."""
    global _tasks
    _tasks = tasks


def arrival_protocol() -> str:
    """What to pass as ``uvicorn.run(http=...)``: the stamping protocol, 'auto' without httptools.

    An import path, not the class: with ``--workers`` uvicorn pickles its config for each worker
    process, and each imports the class there.
    """
    if importlib.util.find_spec("httptools") is None:
        return "auto"  # uvicorn's h11 protocol: deadlines then start in the route
    return PROTOCOL_PATH
