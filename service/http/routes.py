"""Thin HTTP routes: /models, /healthz, /readyz, /metrics (POST /predict is the gate's)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import Unavailable
from service.http.responses import error_reply, json_reply
from service.http.schemas import PREDICT_ERRORS, ErrorResponse
from service.http.state import registry_of, state_of
from service.observability.triton_metrics import triton_text

router = APIRouter()


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": PREDICT_ERRORS[status]} for status in (404, 503)
}


@router.get("/models", summary="Every served model")
async def list_models(request: Request) -> dict[str, Any]:
    """Versions, labels, input spec, provider, offline figures and live latency of every model."""
    registry = registry_of(request)
    return {
        "default_model": registry.default_model,
        "models": [registry.describe(name) for name in sorted(registry.models)],
        "not_served": [
            {"model": f.model, "version": f.version, "reason": f.reason} for f in registry.failures
        ],
    }


@router.get("/models/{name}", summary="One served model", responses={404: _ERRORS[404]})
async def get_model(request: Request, name: str) -> dict[str, Any]:
    """Versions, labels, input spec, provider, offline figures and live latency of one model."""
    return registry_of(request).describe(name)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: _ERRORS[503]})
async def readyz(request: Request) -> Response:
    """200 when every model version is loaded, warm and accepting requests, else 503."""
    state = state_of(request)
    registry = state.registry
    if state.draining:
        refusal = Unavailable("shutting down: finishing accepted requests", code="shutting_down")
        return error_reply(refusal).as_response()
    if registry is None or not registry.ready:
        refusal = Unavailable("models are not all loaded and warm", code="not_ready")
        return error_reply(refusal).as_response()
    return json_reply({"status": "ready", "models": len(registry.all())}).as_response()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of the service (all its worker processes, when several),
    with Triton's metric names unless turned off."""
    state = state_of(request)
    derived = triton_text if state.settings.triton_metric_names else None
    return Response(state.metrics.exposition(derived), media_type=CONTENT_TYPE_LATEST)
