"""uvicorn HTTP protocol that stamps each request's arrival, so its deadline starts there."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

# Key in the ASGI scope's "state" (Starlette: ``request.state``) holding the monotonic instant at
# which uvicorn began parsing the request, before the request waits for the event loop.
ARRIVAL_KEY = "rocketserve_arrival"

# uvicorn's set of running request tasks, published by the protocol below (one server per process).
_tasks: set[Any] | None = None


def requests_in_progress() -> int:
    """Requests uvicorn is handling right now, the caller's included; 0 when not known."""
    return len(_tasks) if _tasks is not None else 0


def arrival(request: Request) -> float:
    """When the request arrived: uvicorn's stamp if it set one, else now."""
    state = request.scope.get("state")
    stamp = state.get(ARRIVAL_KEY) if state else None
    return stamp if isinstance(stamp, float) else time.monotonic()


def arrival_protocol() -> type[Any] | str:
    """The stamping protocol class for ``uvicorn.run(http=...)``; 'auto' without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn's h11 protocol, deadlines start in the route
        return "auto"

    class ArrivalHttpToolsProtocol(HttpToolsProtocol):
        """httptools protocol whose scope carries the arrival instant of each request."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            global _tasks
            _tasks = self.tasks

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.scope["state"][ARRIVAL_KEY] = time.monotonic()

    return ArrivalHttpToolsProtocol
