"""The gRPC endpoint: a grpc.aio server beside uvicorn's, in the same event loop, for its life.

It serves the Open Inference Protocol's ``inference.GRPCInferenceService``
(``service.grpc.servicer``) on ``ROCKETSERVE_GRPC_PORT``, in every worker process (the kernel
spreads the connections: SO_REUSEPORT; one process alone owns the port), so its requests share
the batchers, the deadlines and the metrics of the HTTP ones. A ServiceError becomes the gRPC
status of its HTTP one (a 400 is INVALID_ARGUMENT, a 404 NOT_FOUND, a 503 UNAVAILABLE with
``retry-after``) and its message; anything else is INTERNAL, logged with its traceback, and the
server goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from service.errors import ServiceError
from service.grpc import messages as pb
from service.grpc.messages import read_message
from service.grpc.servicer import METHODS, UNSUPPORTED, Servicer
from service.http.state import ServiceState
from service.settings import Settings

log = logging.getLogger("service")

SERVICE_NAME = "inference.GRPCInferenceService"  # KServe's and Triton's, on the wire
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
DRAIN_POLL_S = 0.1  # how soon after SIGTERM the gRPC server stops taking calls
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

MAX_STATUS_MESSAGE = 4096  # characters of a status message
MAX_MESSAGE_BYTES = 2**31 - 1  # the most gRPC's message size options take
CONTROL_CALLS = 16  # calls beyond the in-flight limit left for health, metadata and the rest

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """The gRPC status of a ServiceError's HTTP status (other 4xx: INVALID_ARGUMENT)."""
    if exc.status in STATUS_CODES:
        return STATUS_CODES[exc.status]
    return grpc.StatusCode.INVALID_ARGUMENT if exc.status < 500 else grpc.StatusCode.INTERNAL


def status_message(message: str) -> str:
    """A status message short enough for any client: it travels in a header, and gRPC clients
    refuse headers over 8 to 16 KiB (a message may quote what the client sent)."""
    if len(message) <= MAX_STATUS_MESSAGE:
        return message
    return message[: MAX_STATUS_MESSAGE - 20] + " ... (message cut)"


def guarded(
    method: str,
    handler: Handler,
    request_type: Any,
    unread: Callable[[ServiceError], None] | None = None,
) -> Handler:
    """``handler`` on the call's message, read from its bytes here (a message that is not one
    is the client's mistake: INVALID_ARGUMENT, where gRPC's own deserializer would answer
    INTERNAL; ``unread`` counts it); its errors answered as gRPC statuses."""

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            try:
                request = read_message(request_type, raw)
            except ServiceError as exc:
                if unread is not None:
                    unread(exc)
                raise
            return await handler(request, context)
        except ServiceError as exc:
            retry = exc.headers.get("Retry-After")
            trailers = (("retry-after", retry),) if retry else ()
            await context.abort(status_code(exc), status_message(exc.message), trailers)
        except Exception:
            log.exception("unhandled error in gRPC %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return call


def generic_handler(state: ServiceState) -> grpc.GenericRpcHandler:
    """Every method of the service, bound to ``state``."""
    servicer = Servicer(state)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, (request_type, response_type) in METHODS.items():
        unread = servicer.refused if name == "ModelInfer" else None
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            guarded(name, getattr(servicer, name), request_type, unread),
            response_serializer=response_type.SerializeToString,
        )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,  # each request read, and its error answered, in the stream
        response_serializer=pb.ModelStreamInferResponse.SerializeToString,
    )
    for name, (streaming, instead) in UNSUPPORTED.items():
        handlers[name] = _unsupported(name, streaming, instead)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def health_handler(state: ServiceState) -> grpc.GenericRpcHandler:
    """gRPC's standard health service: Check, as Kubernetes' gRPC probes call it."""
    servicer = Servicer(state)
    check = grpc.unary_unary_rpc_method_handler(
        guarded("Health/Check", servicer.HealthCheck, pb.HealthCheckRequest),
        response_serializer=pb.HealthCheckResponse.SerializeToString,
    )
    watch = _unsupported("Health/Watch", False, "call Check")
    watch = grpc.unary_stream_rpc_method_handler(watch.unary_unary)
    return grpc.method_handlers_generic_handler(
        HEALTH_SERVICE_NAME, {"Check": check, "Watch": watch}
    )


def _unsupported(name: str, streaming: bool, instead: str) -> grpc.RpcMethodHandler:
    message = f"{name} is not supported by this server; {instead}"

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def worker_processes(settings: Settings) -> int:
    """The worker processes that serve (``python -m service`` sets the number it chose)."""
    return int(settings.workers) if str(settings.workers).isdecimal() else 1


def listen_address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@asynccontextmanager
async def grpc_endpoint(state: ServiceState) -> AsyncIterator[None]:
    """Serve gRPC on ``settings.grpc_port`` while the context is open; from SIGTERM (or on
    leaving, whichever comes first), stop taking calls and let those accepted finish within
    ``shutdown_grace_s``."""
    settings = state.settings
    assert settings.grpc_port is not None
    limit = settings.in_flight_limit
    server = grpc.aio.server(
        # gRPC holds each call's whole message before the handler runs: bounding the calls
        # bounds that memory, as the admission gate bounds the REST requests being read.
        maximum_concurrent_rpcs=limit + CONTROL_CALLS if limit else None,
        options=[
            ("grpc.max_receive_message_length", min(settings.max_body_bytes, MAX_MESSAGE_BYTES)),
            ("grpc.max_send_message_length", -1),
            # several worker processes share the port; one alone owns it (a second server
            # started on the same port fails, rather than silently sharing its calls)
            ("grpc.so_reuseport", 1 if worker_processes(settings) > 1 else 0),
        ],
    )
    server.add_generic_rpc_handlers((generic_handler(state), health_handler(state)))
    address = listen_address(settings.host, settings.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from None
    await server.start()
    log.info("gRPC endpoint on %s", address)
    drain = asyncio.create_task(_stop_on_drain(state, server), name="grpc-drain")
    try:
        yield
    finally:
        if state.draining:
            await drain  # begun at the signal, beside uvicorn's own drain: let it finish
        else:  # the app stops for another reason (SIGINT, a test)
            drain.cancel()
            await server.stop(settings.shutdown_grace_s)


async def _stop_on_drain(state: ServiceState, server: grpc.aio.Server) -> None:
    """From SIGTERM on (``state.draining``), take no new calls and let those accepted finish
    within ``shutdown_grace_s``: while uvicorn drains its requests, not after it has."""
    while not state.draining:
        await asyncio.sleep(DRAIN_POLL_S)
    log.info("SIGTERM: gRPC takes no new calls; accepted calls finish")
    await server.stop(state.settings.shutdown_grace_s)
