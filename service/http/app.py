"""App factory: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the models."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import FrameType

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.http.admission import AdmissionGate, is_predict
from service.http.openapi import install_openapi
from service.http.responses import install_error_handlers
from service.http.routes import router
from service.http.state import ServiceState
from service.http.uvicorn_hooks import requests_in_progress
from service.http.v2_routes import router as v2_router
from service.inputs.pipeline import warm_up_decoders
from service.observability.metrics import ServiceMetrics
from service.repository.control import ModelControl, announce, control_folder, read_desired
from service.repository.polling import RepositoryPoller, snapshot
from service.repository.registry import ModelRegistry
from service.settings import Settings

log = logging.getLogger("service")

DESCRIPTION = """Serves a rocketserve model repository with ONNX Runtime and dynamic batching.

POST /predict takes multipart images (field `file`), JSON `{"image"|"images"|"tensor"}` or a raw
`image/*` body; errors are `{"error": {"code", "message"}}` with a 4xx status for client mistakes.
"""


class RocketServeApp(FastAPI):
    """FastAPI, except that POST /predict goes straight to the AdmissionGate, its only entry.

    Everything else (the other routes, OpenAPI, error handlers, lifespan) is FastAPI's; the
    OpenAPI document of /predict is generated from its schemas (``service.http.openapi``).
    """

    gate: AdmissionGate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI call: /predict to the gate, the rest through FastAPI."""
        if is_predict(scope):
            await self.gate(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def drain_on_sigterm(state: ServiceState) -> Callable[[], None]:
    """On SIGTERM, say "not ready" at once, then let the server's own handler shut down.

    uvicorn's handler stops accepting connections and lets accepted requests finish (within
    ``shutdown_grace_s``); /readyz turns 503 from the signal on, so that no probe sees a
    draining process as ready. Only in the main thread (where signals are delivered). Returns
    what restores the previous handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        state.draining = True
        log.info("SIGTERM: draining (readyz 503), accepted requests finish")
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return restore


# An endpoint of another protocol served for the app's life, from its state (service.grpc).
Beside = Callable[[ServiceState], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings,
    registry: ModelRegistry | None = None,
    metrics: ServiceMetrics | None = None,
    beside: Sequence[Beside] = (),
) -> FastAPI:
    """A new app; models load in its lifespan unless a loaded ``registry`` is given. Each of
    ``beside`` is entered once the models are loaded and left before they are closed."""
    if registry is not None:
        metrics = registry.metrics
    state = ServiceState(settings, metrics or ServiceMetrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        folder = None  # the repository as loaded, for the poller
        explicit = settings.model_control_mode == "explicit"
        shared = control_folder() if explicit else None  # with several worker processes
        started_from = None  # what the other workers serve, when this one starts
        if registry is not None:
            state.registry = registry
        else:
            if settings.model_control_mode == "poll":
                # Looked at before loading: a change made while the models load is applied after.
                folder = await asyncio.to_thread(snapshot, settings.model_repository)
            if shared is not None:
                announce(shared)  # a change asked from now on waits for this worker
                started_from = await asyncio.to_thread(read_desired, shared)
            state.registry = await asyncio.to_thread(
                ModelRegistry.load,
                settings,
                state.metrics,
                requests_in_progress,
                started_from.plan() if started_from is not None else None,
            )
        for model in state.registry.all():
            warm_up_decoders(model.card.input)
        state.registry.start()
        control = ModelControl(state.registry, shared, started_from=started_from)
        await control.join()  # what the other workers loaded or unloaded meanwhile
        state.control = control
        follower = asyncio.create_task(control.follow(), name="model-control")
        restore_sigterm = drain_on_sigterm(state)
        poller = None
        if settings.model_control_mode == "poll":
            watcher = RepositoryPoller(
                state.registry, settings.model_repository, settings.repository_poll_s, folder
            )
            poller = asyncio.create_task(watcher.run(), name="repository-poller")
        try:
            async with AsyncExitStack() as endpoints:
                for endpoint in beside:
                    await endpoints.enter_async_context(endpoint(state))
                log.info("ready: %d model version(s)", len(state.registry.all()))
                yield
        finally:
            restore_sigterm()
            if poller is not None:
                poller.cancel()
            follower.cancel()
            control.leave()
            await state.registry.close()

    app = RocketServeApp(
        title="rocketserve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,  # "/v2/" is no route: a 404 JSON error, not a 307 elsewhere
    )
    app.state.service = state
    app.gate = AdmissionGate(state)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(router)
    app.include_router(v2_router)
    return app
