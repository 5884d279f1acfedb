"""The life of one prediction request, shared by every protocol that asks for predictions.

``/predict`` and the Open Inference Protocol's ``infer`` differ only in how a body names its
model and inputs and how an answer is written; everything else is here, once: the deadline from
the request's arrival, the body read (size limit, read timeout), the request counted while it may
still join a batch, the model version's batcher (so concurrent requests of both protocols to one
model share batches), a client that leaves while it waits, the late answer that is a 504, and
every outcome counted in the metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from service.errors import DeadlineExceeded, ServiceError, Unavailable, Unprocessable
from service.http.asgi_io import disconnected, header, read_body
from service.http.responses import Reply, error_reply
from service.http.state import ServiceState
from service.http.uvicorn_hooks import arrival
from service.inference.batcher import BatchResult
from service.inputs.encoding import decode_body
from service.repository.registry import ModelRegistry, ServedModel
from service.repository.routing import Objective

A = TypeVar("A")  # a protocol's answer: an HTTP Reply, a gRPC response message


@dataclass(frozen=True, slots=True)
class Prepared(Generic[A]):
    """A request read and checked: its model version, its batch, and how to answer it."""

    served: ServedModel
    batch: np.ndarray
    answer: Callable[[BatchResult, float], A]  # (result, total seconds) -> the answer
    timeout_s: float | None = None  # the client's own, from arrival, when it gave one


class Resolver:
    """How a protocol names its model: ``resolve`` also tells the request's life which model
    version it is for, so that a request refused after that is counted under its model."""

    def __init__(self, registry: ModelRegistry, max_inputs: int) -> None:
        self._registry = registry
        self._max_inputs = max_inputs
        self.served: ServedModel | None = None

    def knows(self, name: str) -> bool:
        """Whether a model of that name is served."""
        return name in self._registry.models

    def route(self, objective: Objective, inputs: int = 1) -> tuple[ServedModel, dict[str, Any]]:
        """The model version an objective chooses for ``inputs`` inputs (see
        ModelRegistry.route); more than a request may carry are routed as that many, since they
        are the 413 of decoding, not a budget no model meets."""
        served, note = self._registry.route(objective, min(inputs, self._max_inputs))
        served.active += 1
        self.served = served
        return served, note

    def resolve(self, spec: str | None) -> ServedModel:
        """The model version named by ``spec`` (see ModelRegistry.resolve)."""
        served = self._registry.resolve(spec)
        served.active += 1  # until answered: a retired version waits for its accepted requests
        self.served = served
        return served


# (body, resolver) -> Prepared; raises a ServiceError for anything wrong with the request.
Prepare = Callable[[bytes, "Resolver"], Awaitable[Prepared[Reply]]]


async def serve(
    scope: Scope, receive: Receive, state: ServiceState, prepare: Prepare, dialect: str = "rest"
) -> Reply:
    """Answer one HTTP prediction request; never raises a ServiceError (it becomes the answer)."""
    settings = state.settings
    started = arrival(scope)

    async def read_and_prepare(models: Resolver) -> Prepared[Reply]:
        body = await read_body(
            receive,
            settings.max_body_bytes,
            header(scope, b"content-length"),
            started + settings.body_read_timeout_s,
        )
        body = decode_body(body, header(scope, b"content-encoding"), settings.max_body_bytes)
        return await prepare(body, models)

    try:
        return await run_request(state, started, read_and_prepare, lambda: disconnected(receive))
    except ServiceError as exc:
        return error_reply(exc, dialect)
    except ClientDisconnect:
        return Reply(499, b"")


async def run_request(
    state: ServiceState,
    started: float,
    prepare: Callable[[Resolver], Awaitable[Prepared[A]]],
    abandon: Callable[[], Awaitable[object]] | None = None,
) -> A:
    """The life of one prediction request from its arrival (``time.monotonic()``) on, whatever
    its protocol: ``prepare`` reads it and names its model, then the batch, the checks of the
    answer and the metrics. Raises the ServiceError that answers it, ClientDisconnect or
    CancelledError when its client left, each counted; returns ``prepared.answer``'s."""
    settings = state.settings
    deadline = started + settings.request_timeout_ms / 1000.0
    resolver: Resolver | None = None
    in_flight = None
    try:
        registry = state.registry
        if registry is None:
            raise Unavailable(
                "models are not loaded yet",
                code="not_ready",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        with registry.arrivals:  # while read and decoded, this request may still join a batch
            resolver = Resolver(registry, settings.max_inputs_per_request)
            prepared = await prepare(resolver)
            decode_s = time.monotonic() - started
            if prepared.timeout_s is not None:  # a client's shorter deadline is the one kept
                deadline = min(deadline, started + prepared.timeout_s)
            served = prepared.served
            in_flight = served.request_metrics.in_flight
            in_flight.inc()
        result = await served.batcher.submit(prepared.batch, deadline, abandon)
        if not np.isfinite(result.outputs).all():
            # Finite inputs far outside the training range (every value near float32's max)
            # overflow the logits: there is no answer to give, and it is the input's doing.
            raise Unprocessable(
                "the model's outputs for this input are not finite (inf or NaN): its values are "
                "far outside the range the model was trained on",
                code="non_finite_output",
            )
        if time.monotonic() > deadline:
            # The answer was ready in time but the event loop came back to it late (overload):
            # it is late all the same, and a 200 past the deadline would break the contract.
            raise DeadlineExceeded(
                "the answer was not ready within the request deadline",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
    except ServiceError as exc:
        count(state, resolver.served if resolver else None, exc.status, started)
        raise
    except (ClientDisconnect, asyncio.CancelledError):
        count(state, resolver.served if resolver else None, 499, started)
        raise
    finally:
        if in_flight is not None:
            in_flight.dec()
        if resolver is not None and resolver.served is not None:
            resolver.served.active -= 1
    total = time.monotonic() - started
    answer = prepared.answer(result, total)
    answered = time.monotonic() - started
    if registry.sampler is not None:
        # After the answer is built; a sample runs as its own task, off this request's path.
        registry.sampler.offer(served, prepared.batch, result.outputs, registry.newest)
    served.request_metrics.succeeded(
        len(prepared.batch),
        answered,
        (decode_s, result.queue_s, result.inference_s, answered - total),
    )
    served.window.add(total, time.monotonic(), len(prepared.batch))
    return answer


def count(state: ServiceState, served: ServedModel | None, status: int, started: float) -> None:
    """Count one finished request (and its latency when its model is known)."""
    if served is None:
        state.metrics.requests.labels("unknown", "", str(status)).inc()
    else:
        served.request_metrics.count(status, time.monotonic() - started)
