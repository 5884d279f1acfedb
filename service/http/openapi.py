"""The OpenAPI document: FastAPI's for the routes, plus POST /predict generated from its schemas.

POST /predict is served by the admission gate ahead of FastAPI's routing (``service.http.app``),
so FastAPI does not see it; its path item is generated here from the pydantic models of
``service.http.schemas`` (request forms, answer, errors) and merged into FastAPI's document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.http.schemas import (
    PREDICT_ERRORS,
    ErrorResponse,
    PredictForm,
    PredictImage,
    PredictImages,
    PredictResponse,
    PredictTensor,
)

REF = "#/components/schemas/{model}"
_MODELS: tuple[type[BaseModel], ...] = (
    PredictImage,
    PredictImages,
    PredictTensor,
    PredictForm,
    PredictResponse,
    ErrorResponse,
)
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}

_JSON_EXAMPLES = {
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
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def predict_path_item() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the path item of POST /predict, the component schemas it refers to)."""
    _, top = models_json_schema([(m, "validation") for m in _MODELS], ref_template=REF)
    components: dict[str, Any] = top.get("$defs", {})
    errors = {
        str(status): {
            "description": text,
            "content": {"application/json": {"schema": _ref(ErrorResponse)}},
            **({"headers": _RETRY_AFTER} if status in (503, 504) else {}),
        }
        for status, text in PREDICT_ERRORS.items()
    }
    query = [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "name or name:version (a body field of the same name wins)",
        },
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "predictions per input (a body field of the same name wins)",
        },
    ]
    query += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": f"route by objective (see the JSON body's {name})",
        }
        for name, schema in (
            ("latency_budget_ms", {"type": "number", "exclusiveMinimum": 0}),
            ("min_accuracy", {"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
            ("family", {"type": "string"}),
            ("fallback", {"type": "string", "enum": ["cheapest", "most_accurate"]}),
        )
    ]
    operation = {
        "summary": "Classify images or a preprocessed tensor",
        "description": "Classify every input of the body with one model; concurrent requests "
        "are batched. The body is a multipart form, a JSON object with exactly one of "
        "`image`, `images` or `tensor`, or a raw `image/*` body.",
        "operationId": "predict",
        "parameters": query,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _ref(PredictForm)},
                "application/json": {
                    "schema": {
                        "anyOf": [_ref(PredictImage), _ref(PredictImages), _ref(PredictTensor)]
                    },
                    "examples": _JSON_EXAMPLES,
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {
                "description": "Top-k predictions per input, in input order.",
                "content": {"application/json": {"schema": _ref(PredictResponse)}},
            },
            **errors,
        },
    }
    return {"post": operation}, components


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` publish FastAPI's routes and POST /predict, computed once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            item, components = predict_path_item()
            doc["paths"] = {"/predict": item, **doc.get("paths", {})}
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
