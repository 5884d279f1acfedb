"""Thin HTTP routes: /predict, /models, /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import Unavailable, error_response
from service.predict import predict as handle_predict
from service.registry import ModelRegistry
from service.schemas import ErrorResponse, PredictResponse
from service.state import ServiceState

router = APIRouter()


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def _registry(request: Request) -> ModelRegistry:
    registry = _state(request).registry
    if registry is None:
        raise Unavailable("models are not loaded yet", code="not_ready")
    return registry


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Empty body, not an image, truncated image, bad base64 or JSON.",
        404: "Unknown model or version.",
        413: "Body, image pixel count or number of inputs over a limit.",
        415: "Unsupported content type.",
        422: "Tensor of wrong shape/dtype/rank or non-finite; top_k out of range.",
        503: "Queue full (with Retry-After) or shutting down.",
        504: "Deadline passed before the answer was ready.",
    }.items()
}

_PREDICT_BODY = {
    "parameters": [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "name or name:version (default: the default model, highest version)",
        },
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "predictions per input (default 5, at most the number of labels)",
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more images (repeat the field).",
                        },
                        "model": {"type": "string"},
                        "top_k": {"type": "integer"},
                    },
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "base64 PNG/JPEG"},
                        "images": {"type": "array", "items": {"type": "string"}},
                        "tensor": {
                            "type": "array",
                            "description": "Preprocessed [C,H,W] or [N,C,H,W] numbers.",
                        },
                        "model": {"type": "string", "description": "name or name:version"},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                },
                "examples": {
                    "image": {
                        "summary": "one base64 PNG",
                        "value": {"image": "iVBORw0KGgoAAAANSUhEUgAA...", "top_k": 3},
                    },
                    "images": {
                        "summary": "several images, a pinned version",
                        "value": {"images": ["iVBORw0...", "/9j/4AAQ..."], "model": "m:2"},
                    },
                    "tensor": {
                        "summary": "a preprocessed tensor [C,H,W]",
                        "value": {"tensor": [[[0.0, 0.5], [1.0, -1.0]]], "top_k": 1},
                    },
                },
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.post(
    "/predict",
    summary="Classify images or a preprocessed tensor",
    response_model=None,
    responses={200: {"model": PredictResponse}, **_ERRORS},
    openapi_extra=_PREDICT_BODY,
)
async def predict(request: Request) -> Response:
    """Classify every input of the body with one model; concurrent requests are batched."""
    # The app dispatches POST /predict to the AdmissionGate before its routing (service.app), so
    # this route is reached only where the router is mounted without it; it serves the same way.
    reply = await handle_predict(request.scope, request.receive, _state(request))
    return Response(reply.body, reply.status, dict(reply.headers), media_type="application/json")


@router.get("/models", summary="Every served model")
async def list_models(request: Request) -> dict[str, Any]:
    """Versions, labels, input spec, provider, offline figures and live latency of every model."""
    registry = _registry(request)
    return {
        "default_model": registry.default_model,
        "models": [registry.describe(name) for name in sorted(registry.models)],
    }


@router.get("/models/{name}", summary="One served model", responses={404: _ERRORS[404]})
async def get_model(request: Request, name: str) -> dict[str, Any]:
    """Versions, labels, input spec, provider, offline figures and live latency of one model."""
    return _registry(request).describe(name)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: _ERRORS[503]})
async def readyz(request: Request) -> Response:
    """200 when every model version is loaded, warm and accepting requests, else 503."""
    registry = _state(request).registry
    if registry is None or not registry.ready:
        return error_response(Unavailable("models are not all loaded and warm", code="not_ready"))
    return JSONResponse({"status": "ready", "models": len(registry.all())})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(
        generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
