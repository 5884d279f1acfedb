"""Arrival stamps, uvicorn's running-request count, the protocol and log config to run it with."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
from typing import Any

import uvicorn
from starlette.types import Scope
from uvicorn.config import LOGGING_CONFIG

from service.observability.logs import ACCESS_LOGGER, JsonFormatter

log = logging.getLogger(__name__)

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


# The uvicorn releases the protocol subclass was tested with (pyproject.toml pins the same range).
TESTED_UVICORN = ("0.54",)


def protocol_hooks_missing() -> str | None:
    """Why the stamping protocol cannot run on the installed uvicorn, or None when it can.

    ``ArrivalHttpToolsProtocol`` relies on uvicorn internals: the class
    ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``, its ``on_message_begin``
    callback creating ``self.scope`` with a ``"state"`` dict, and its ``self.tasks`` set of
    running request tasks. Each is checked here, in the source of the installed uvicorn.
    """
    if importlib.util.find_spec("httptools") is None:
        return "httptools is not installed"
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError as exc:
        return f"uvicorn has no httptools protocol module ({exc})"
    cls = getattr(httptools_impl, "HttpToolsProtocol", None)
    if cls is None:
        return "uvicorn's httptools module has no HttpToolsProtocol class"
    for method, needle in (("__init__", "self.tasks"), ("on_message_begin", '"state"')):
        function = getattr(cls, method, None)
        if function is None:
            return f"HttpToolsProtocol has no {method}"
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            return f"the source of HttpToolsProtocol.{method} cannot be read"
        if needle not in source:
            return f"HttpToolsProtocol.{method} no longer uses {needle}"
    return None


def arrival_protocol() -> str:
    """What to pass as ``uvicorn.run(http=...)``: the stamping protocol, or uvicorn's own.

    An import path, not the class: with ``--workers`` uvicorn pickles its config for each worker
    process, and each imports the class there. When the uvicorn internals it needs are missing,
    one warning says so and uvicorn's own protocol runs: the service works, but deadlines count
    from the route instead of the arrival, and the loop-wait shedding and inline lone requests
    are off.
    """
    reason = protocol_hooks_missing()
    if reason is not None:
        version = getattr(uvicorn, "__version__", "?")
        log.warning(
            "arrival stamps off (uvicorn %s, tested with %s): %s; running uvicorn's own protocol "
            "(deadlines from the route, no loop-wait shedding, no inline lone requests)",
            version, "/".join(TESTED_UVICORN), reason,
        )  # fmt: skip
        return "auto"
    return PROTOCOL_PATH


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """The ``log_config`` to run uvicorn with: uvicorn's own for text; for JSON
    (``service.observability.logs``), every logger, uvicorn's and the root that the service's
    loggers reach, through ``JsonFormatter`` at ``level``."""
    if log_format != "json":
        return LOGGING_CONFIG
    formatter = f"{JsonFormatter.__module__}.{JsonFormatter.__qualname__}"
    stream = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": formatter}},
        "handlers": {
            "stderr": {**stream, "stream": "ext://sys.stderr"},
            "stdout": {**stream, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            ACCESS_LOGGER: {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
