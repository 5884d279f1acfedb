"""Arrival stamps, uvicorn's running-request count, and the protocol to run uvicorn with."""

from __future__ import annotations

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
