"""The /predict hot path in plain ASGI: read, decode, batch, infer, answer with JSON bytes.

Nothing here goes through Starlette's Request, FastAPI's parameter parsing or a Response
object: headers and the query come straight from the ASGI scope, the body straight from
``receive``, and the answer is two ASGI messages. Profiling a saturated service showed the
framework objects costing more CPU per request than decoding a CIFAR-10 JPEG.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from service.errors import (
    DeadlineExceeded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceError,
    Unavailable,
)
from service.http.responses import Reply, error_reply, json_reply
from service.http.state import ServiceState
from service.http.uvicorn_hooks import arrival
from service.inference.predictions import top_k
from service.inputs.body import parse_body, parse_top_k
from service.inputs.pipeline import to_batch
from service.repository.registry import ServedModel


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


async def predict(scope: Scope, receive: Receive, state: ServiceState) -> Reply:
    """Classify every input of one /predict request with one model; never raises a ServiceError."""
    settings = state.settings
    started = arrival(scope)
    deadline = started + settings.request_timeout_ms / 1000.0
    served: ServedModel | None = None
    in_flight = None
    try:
        registry = state.registry
        if registry is None:
            raise Unavailable(
                "models are not loaded yet",
                code="not_ready",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        with registry.arrivals:  # while decoding, this request may still join a batch
            body = await read_body(
                receive,
                settings.max_body_bytes,
                header(scope, b"content-length"),
                started + settings.body_read_timeout_s,
            )
            parsed = parse_body(header(scope, b"content-type"), body)
            query = query_params(scope)
            served = registry.resolve(parsed.model or query.get("model"))
            in_flight = served.request_metrics.in_flight
            in_flight.inc()
            raw_k = parsed.top_k if parsed.top_k is not None else query.get("top_k")
            k = parse_top_k(raw_k, settings.default_top_k, len(served.card.labels))
            batch = await to_batch(parsed, served.card.input, settings)
        result = await served.batcher.submit(batch, deadline, lambda: disconnected(receive))
        if time.monotonic() > deadline:
            # The answer was ready in time but the event loop came back to it late (overload):
            # it is late all the same, and a 200 past the deadline would break the contract.
            raise DeadlineExceeded(
                "the answer was not ready within the request deadline",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
    except ServiceError as exc:
        count(state, served, exc.status, started)
        return error_reply(exc)
    except ClientDisconnect:
        count(state, served, 499, started)
        return Reply(499, b"")
    finally:
        if in_flight is not None:
            in_flight.dec()
    predictions = top_k(result.outputs, served.card.labels, k)
    total = time.monotonic() - started
    served.request_metrics.count(200, total)
    served.latencies.append(total)
    return json_reply(
        {
            "model": served.name,
            "version": served.version,
            "predictions": predictions,
            "timing": {
                "queue_ms": round(result.queue_s * 1000.0, 3),
                "inference_ms": round(result.inference_s * 1000.0, 3),
                "total_ms": round(total * 1000.0, 3),
            },
            "batch_size": result.batch_size,
        }
    )


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone (its connection closed); the body is all read by then."""
    while (await receive())["type"] != "http.disconnect":
        pass


def count(state: ServiceState, served: ServedModel | None, status: int, started: float) -> None:
    """Count one finished request (and its latency when its model is known)."""
    if served is None:
        state.metrics.requests.labels("unknown", "", str(status)).inc()
    else:
        served.request_metrics.count(status, time.monotonic() - started)
