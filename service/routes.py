"""Thin HTTP routes: /predict, /models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from service.decoding import (
    PredictRequest,
    load_batch,
    open_images,
    parse_body,
    parse_top_k,
    read_body,
    tensor_to_batch,
)
from service.errors import (
    DeadlineExceeded,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
    error_response,
)
from service.metrics import ServiceMetrics
from service.model_card import InputSpec
from service.predictions import top_k
from service.protocol import arrival
from service.registry import ModelRegistry, ServedModel
from service.schemas import ErrorResponse, PredictResponse
from service.settings import Settings

# Requests declaring more pixels than this are decoded in a worker thread so that large images
# never block the event loop; small ones are decoded inline, cheaper than a thread hop.
INLINE_DECODE_PIXELS = 256 * 256

router = APIRouter()


@dataclass
class ServiceState:
    """What the routes need, owned by one app instance."""

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry | None = None
    predicting: int = 0  # /predict requests past the AdmissionGate right now


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
    # The AdmissionGate in front (service.admission) already refused it when overloaded.
    return await _predict(request, _state(request))


async def _predict(request: Request, state: ServiceState) -> Response:
    settings = state.settings
    started = arrival(request)
    deadline = started + settings.request_timeout_ms / 1000.0
    served: ServedModel | None = None
    in_flight = None
    try:
        registry = _registry(request)
        with registry.arrivals:  # while decoding, this request may still join a batch
            body = await read_body(
                request.stream(), settings.max_body_bytes, request.headers.get("content-length")
            )
            parsed = parse_body(request.headers.get("content-type"), body)
            query = request.query_params  # read directly: FastAPI's parameter parsing is slower
            served = registry.resolve(parsed.model or query.get("model"))
            in_flight = state.metrics.in_flight.labels(served.name, str(served.version))
            in_flight.inc()
            raw_k = parsed.top_k if parsed.top_k is not None else query.get("top_k")
            k = parse_top_k(raw_k, settings.default_top_k, len(served.card.labels))
            batch = await _to_batch(parsed, served.card.input, settings)
        result = await served.batcher.submit(batch, deadline)
        if time.monotonic() > deadline:
            # The answer was ready in time but the event loop came back to it late (overload):
            # it is late all the same, and a 200 past the deadline would break the contract.
            raise DeadlineExceeded(
                "the answer was not ready within the request deadline",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
    except ServiceError as exc:
        _count(state, served, exc.status, started)
        return error_response(exc)
    except ClientDisconnect:
        _count(state, served, 499, started)
        return Response(status_code=499)
    finally:
        if in_flight is not None:
            in_flight.dec()
    predictions = top_k(result.outputs, served.card.labels, k)
    total = time.monotonic() - started
    _count(state, served, 200, started)
    served.latencies.append(total)
    return JSONResponse(
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


async def _to_batch(parsed: PredictRequest, spec: InputSpec, settings: Settings) -> np.ndarray:
    """The model batch of a parsed request; big images are decoded off the event loop."""
    limit = settings.max_inputs_per_request
    if parsed.tensor is not None:
        batch = tensor_to_batch(parsed.tensor, spec)
    elif len(parsed.images) > limit:
        batch = None
    else:
        opened = open_images(parsed.images, settings.max_image_pixels)
        if sum(item.pixels for item in opened) > INLINE_DECODE_PIXELS:
            batch = await asyncio.to_thread(load_batch, opened, spec)
        else:
            batch = load_batch(opened, spec)
    if batch is None or len(batch) > limit:
        raise PayloadTooLarge(f"at most {limit} inputs per request", code="too_many_inputs")
    return batch


def _count(state: ServiceState, served: ServedModel | None, status: int, started: float) -> None:
    name, version = (served.name, str(served.version)) if served else ("unknown", "")
    state.metrics.requests.labels(name, version, str(status)).inc()
    if served is not None:
        state.metrics.request_latency.labels(name, version).observe(time.monotonic() - started)


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
