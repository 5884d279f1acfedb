"""The Open Inference Protocol's REST endpoints but infer: health, metadata, stats, repository.

``GET /v2/health/live|ready``, ``GET /v2`` (server metadata and its extensions), ``GET
/v2/models/{name}[/versions/{v}]`` (inputs and outputs with datatype and shape, ``-1`` for the
batch axis), ``.../ready``, ``.../config`` (Triton's model configuration,
``service.http.v2_config``), ``GET /v2/models[/{name}[/versions/{v}]]/stats`` (Triton's
statistics extension, ``service.observability.statistics``), and the model repository
extension: ``POST /v2/repository/index`` (open) and ``POST
/v2/repository/models/{name}/load|unload`` (they change what is served, so they need
``Authorization: Bearer <ROCKETSERVE_API_KEY>`` and ``model_control_mode: explicit``).
Errors are ``{"error": "message"}`` (``service.http.responses``, dialect "v2").
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service.errors import BadRequest, NotFound, ServiceError
from service.http.asgi_io import read_body
from service.http.responses import json_reply
from service.http.state import ServiceState, control_of, registry_of, state_of
from service.http.v2_config import PLATFORM, model_config
from service.http.v2_infer import model_spec
from service.inputs.body import check_json_size
from service.inputs.v2_request import datatype_of
from service.observability.statistics import model_statistics
from service.repository.registry import ModelRegistry, ServedModel
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

SERVER_NAME = "rocketserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)


def _empty(status: int) -> Response:
    return Response(status_code=status)


@router.get("/health/live", summary="Liveness (v2)")
async def live() -> Response:
    """200 ``{"live": true}`` while the process answers (the body KServe's clients read;
    Triton's read the status alone)."""
    return json_reply({"live": True}).as_response()


@router.get("/health/ready", summary="Readiness (v2)")
async def ready(request: Request) -> Response:
    """200 ``{"ready": true}`` when every model version is ready and the server is not
    draining, else 503 ``{"ready": false}``."""
    state = state_of(request)
    ok = state.registry is not None and state.registry.ready and not state.draining
    return json_reply({"ready": ok}, 200 if ok else 503).as_response()


@router.get("", summary="Server metadata (v2)")
async def server_metadata() -> dict[str, Any]:
    """Name, version and the protocol extensions this server supports."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def model_metadata(registry: ModelRegistry, served: ServedModel) -> dict[str, Any]:
    """The v2 model metadata of one served version."""
    card = served.card
    return {
        "name": served.name,
        "versions": [str(v) for v in sorted(registry.models.get(served.name, {}))],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": card.input.name,
                "datatype": datatype_of(np.dtype(card.input.dtype)),
                "shape": [-1, *card.input.shape],
            }
        ],
        "outputs": [
            {"name": card.output.name, "datatype": "FP32", "shape": [-1, len(card.labels)]}
        ],
    }


def _unsupported(what: str, instead: str) -> NotFound:
    return NotFound(f"{what} is not supported by this server; {instead}", code="not_found")


# Triton's other extensions, not offered: each a clear 404 (not in the OpenAPI document).
@router.api_route("/trace/setting", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/models/{name}/trace/setting", methods=["GET", "POST"], include_in_schema=False)
async def trace_settings(request: Request) -> Response:
    """Triton's trace extension is not offered: 404 saying so."""
    raise _unsupported("the trace extension", "GET /metrics has per-model latency histograms")


@router.api_route("/logging", methods=["GET", "POST"], include_in_schema=False)
async def log_settings(request: Request) -> Response:
    """Triton's logging extension is not offered: 404 saying where logging is set instead."""
    raise _unsupported(
        "the logging extension", "set ROCKETSERVE_LOG_LEVEL and ROCKETSERVE_LOG_FORMAT at start"
    )


@router.api_route(
    "/systemsharedmemory/{rest:path}", methods=["GET", "POST"], include_in_schema=False
)
@router.api_route("/cudasharedmemory/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
async def shared_memory(request: Request) -> Response:
    """Triton's shared-memory extensions are not offered: 404 saying so."""
    raise _unsupported(
        "the shared-memory extension", "send tensors in the request body (binary or JSON)"
    )


async def served_statistics(state: ServiceState, versions: list[ServedModel]) -> dict[str, Any]:
    """The statistics extension's answer (Triton's JSON) for ``versions``; read in a thread,
    since with several workers it reads every worker's metric files, as a scrape does."""
    keys = [(served.name, str(served.version)) for served in versions]
    state.metrics.flush()  # on the loop, where the sums are gathered
    return {"model_stats": await asyncio.to_thread(model_statistics, state.metrics, keys)}


# Declared before /models/{name}, which would otherwise take "stats" for a model's name.
@router.get("/models/stats", summary="Statistics of every model (Triton's extension)")
async def all_statistics(request: Request) -> dict[str, Any]:
    """Every served version's cumulative request, queue and compute counts and times."""
    return await served_statistics(state_of(request), registry_of(request).all())


@router.get("/models/{name}/stats", summary="Statistics of a model's versions")
async def model_statistics_of(request: Request, name: str) -> dict[str, Any]:
    """The statistics of every served version of the model; 404 if it is not served."""
    return await served_statistics(state_of(request), registry_of(request).versions(name))


@router.get("/models/{name}/versions/{version}/stats", summary="Statistics of a model version")
async def version_statistics(request: Request, name: str, version: str) -> dict[str, Any]:
    """The statistics of one version; 404 if it is not served."""
    served = registry_of(request).resolve(model_spec(name, version))
    return await served_statistics(state_of(request), [served])


@router.get("/models/{name}/config", summary="Model configuration (Triton)")
async def get_model_config(request: Request, name: str) -> dict[str, Any]:
    """Triton's model configuration of the model's default (newest loaded) version."""
    return model_config(
        registry_of(request).resolve(model_spec(name, None)), state_of(request).settings
    )


@router.get("/models/{name}/versions/{version}/config", summary="Model version configuration")
async def get_model_version_config(request: Request, name: str, version: str) -> dict[str, Any]:
    """Triton's model configuration of one version."""
    served = registry_of(request).resolve(model_spec(name, version))
    return model_config(served, state_of(request).settings)


@router.get("/models/{name}", summary="Model metadata (v2)")
async def get_model(request: Request, name: str) -> dict[str, Any]:
    """Metadata of the model's default (newest loaded) version."""
    registry = registry_of(request)
    return model_metadata(registry, registry.resolve(model_spec(name, None)))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata (v2)")
async def get_model_version(request: Request, name: str, version: str) -> dict[str, Any]:
    """Metadata of one version."""
    registry = registry_of(request)
    return model_metadata(registry, registry.resolve(model_spec(name, version)))


def _ready(request: Request, name: str, version: str | None) -> Response:
    served = registry_of(request).resolve(model_spec(name, version))
    return _empty(200 if served.ready and served.batcher.running else 503)


@router.get("/models/{name}/ready", summary="Model readiness (v2)")
async def model_ready(request: Request, name: str) -> Response:
    """200 when the model's default version accepts requests; 404 if unknown."""
    return _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version readiness (v2)")
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    """200 when the version accepts requests; 404 if unknown."""
    return _ready(request, name, version)


async def _json_object(request: Request, what: str) -> dict[str, Any]:
    """The request's JSON object body ({} for an empty one); 400 for anything else. Read and
    checked as an infer body is: within the body limit, and refused before parsing when it
    would cost far more memory than its bytes (the index needs no key)."""
    settings = state_of(request).settings
    body = await read_body(
        request.receive, settings.max_body_bytes, request.headers.get("content-length")
    )
    if not body.strip():
        return {}
    check_json_size(body)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"the {what} request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the {what} request body must be a JSON object")
    return value


@router.post("/repository/index", summary="Model repository index (v2)")
async def repository_index(request: Request) -> Response:
    """Every model of the repository folder and version loaded, with its state; with
    ``{"ready": true}``, only the versions ready to serve."""
    ready = (await _json_object(request, "index")).get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest("'ready' must be true or false")
    entries = registry_of(request).index()
    if ready:
        entries = [e for e in entries if e["state"] == "READY"]
    return json_reply(entries).as_response()


def _authorised(request: Request) -> None:
    """Only a caller with the API key may change what is served."""
    authorise(state_of(request).settings, request.headers.get("authorization", ""))


def authorise(settings: Settings, authorization: str) -> None:
    """Raises unless the repository may be changed (``model_control_mode: explicit``, an API key
    set) and ``authorization`` is ``Bearer <the key>``; for every protocol."""
    if settings.model_control_mode != "explicit":  # 'poll': the folder decides, not the API
        raise ServiceError(
            f"loading and unloading models is off (model_control_mode is "
            f"{settings.model_control_mode!r}; set ROCKETSERVE_MODEL_CONTROL_MODE=explicit)",
            code="forbidden",
            status=403,
        )
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if not key:
        raise ServiceError(
            "loading and unloading models needs ROCKETSERVE_API_KEY to be set",
            code="forbidden",
            status=403,
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        raise ServiceError(
            "missing or wrong API key (Authorization: Bearer ...)",
            code="unauthorized",
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )


def refuse_overrides(parameters: dict[str, Any]) -> None:
    """A load's ``config`` and ``file:`` parameters are refused: a model loads from its folder."""
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise BadRequest(
            f"load parameters {overrides} are not supported: a model is loaded from its folder "
            "in the repository as it is (its card and ONNX files); change them there"
        )


@router.post("/repository/models/{name}/load", summary="Load or reload a model (v2)")
async def load_model(request: Request, name: str) -> Response:
    """Load the model's versions from the repository folder (a reload if it is loaded):
    the new versions are loaded and warmed beside the old, switched to at once, and the old
    ones finish what they accepted before they are released."""
    _authorised(request)
    parameters = (await _json_object(request, "load")).get("parameters")
    parameters = {} if parameters is None else parameters  # an empty list is not an object
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    refuse_overrides(parameters)
    await control_of(state_of(request)).load(name)
    return _empty(200)


@router.post("/repository/models/{name}/unload", summary="Unload a model (v2)")
async def unload_model(request: Request, name: str) -> Response:
    """Stop serving the model: new requests get 404, accepted ones still get their answers."""
    _authorised(request)
    await control_of(state_of(request)).unload(name)
    return _empty(200)
