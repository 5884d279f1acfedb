"""App factory: ``create_app(settings)`` builds a FastAPI app whose lifespan loads the models."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.http.admission import AdmissionGate, is_predict
from service.http.openapi import install_openapi
from service.http.responses import install_error_handlers
from service.http.routes import router
from service.http.state import ServiceState
from service.http.uvicorn_hooks import requests_in_progress
from service.inputs.pipeline import warm_up_decoders
from service.observability.metrics import ServiceMetrics
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


def create_app(
    settings: Settings,
    registry: ModelRegistry | None = None,
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """A new app; models load in its lifespan unless a loaded ``registry`` is given."""
    if registry is not None:
        metrics = registry.metrics
    state = ServiceState(settings, metrics or ServiceMetrics())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if registry is not None:
            state.registry = registry
        else:
            state.registry = await asyncio.to_thread(
                ModelRegistry.load, settings, state.metrics, requests_in_progress
            )
        for model in state.registry.all():
            warm_up_decoders(model.card.input)
        state.registry.start()
        log.info("ready: %d model version(s)", len(state.registry.all()))
        try:
            yield
        finally:
            await state.registry.close()

    app = RocketServeApp(
        title="rocketserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan
    )
    app.state.service = state
    app.gate = AdmissionGate(state)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings come from ROCKETSERVE_* variables."""
    settings = Settings()  # type: ignore[call-arg]  # model_repository comes from the env
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    return create_app(settings)
