"""Reading an HTTP request in plain ASGI: headers, query, the body (bounded, timed), a disconnect.

The prediction endpoints read their requests with these instead of Starlette's Request objects:
the framework objects cost more CPU per request than decoding a CIFAR-10 JPEG.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from service.errors import PayloadTooLarge, RequestTimeout


def header(scope: Scope, name: bytes) -> str | None:
    """The last value of header ``name`` (lower case) in an ASGI scope, else None."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return found.decode("latin-1") if found is not None else None


def query_params(scope: Scope) -> dict[str, str]:
    """The query string as a dict (the last value of a repeated key wins, as in Starlette)."""
    raw: bytes = scope.get("query_string", b"")
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}


def _declared_length(value: str | None) -> int | None:
    """Content-Length as an int when it is a plain one (uvicorn has checked it already)."""
    if value is None or not (value.isascii() and value.isdecimal()) or len(value) > 18:
        return None
    return int(value)


async def read_body(
    receive: Receive, limit: int, declared: str | None, deadline: float | None = None
) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and
    with 408 if it has not all arrived by ``deadline`` (a ``time.monotonic()`` instant)."""
    length = _declared_length(declared)
    if length is not None and length > limit:
        raise PayloadTooLarge(
            f"body of {length} bytes is over the limit of {limit} bytes", code="body_too_large"
        )
    parts: list[bytes] = []
    size = 0
    timer = None
    timed_out = False
    if deadline is not None:
        current = asyncio.current_task()
        assert current is not None
        cancel = current.cancel

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            cancel()

        # A timer that cancels this task, not asyncio.wait_for: no helper task per message.
        timer = asyncio.get_running_loop().call_at(_loop_time(deadline), expire)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"body is over the limit of {limit} bytes", code="body_too_large"
                )
            parts.append(chunk)
            if not message.get("more_body", False):
                break
    except asyncio.CancelledError:
        if not timed_out:
            raise
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()  # the cancellation was this timer's, not the caller's
        raise RequestTimeout(
            f"the request body did not arrive in time ({size} bytes received)",
            headers={"Connection": "close"},
        ) from None
    finally:
        if timer is not None:
            timer.cancel()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _loop_time(instant: float) -> float:
    """A ``time.monotonic()`` instant on the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (instant - time.monotonic())


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone (its connection closed); the body is all read by then."""
    while (await receive())["type"] != "http.disconnect":
        pass
