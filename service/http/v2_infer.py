"""POST /v2/models/{name}[/versions/{v}]/infer: the Open Inference Protocol's inference.

Inputs come as JSON ``data`` or through the binary tensor data extension (including a raw body
that is the model's only input); the model's input may also be sent as BYTES holding encoded
images, decoded and preprocessed exactly as /predict does it. Outputs go back as JSON or binary as
asked, and the classification extension (``parameters.classification: K``) answers the top K as
BYTES ``"value:index:label"`` (the output's own values, as Triton gives them). Errors are
``{"error": "message"}``: 404 for an unknown model or version, 400 for a wrong shape, datatype or
byte count. The request's life is ``service.http.serving``'s: same batches, deadlines, admission
and metrics as /predict.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from starlette.types import Receive, Scope

from service.errors import BadRequest, NotFound, PayloadTooLarge
from service.http.asgi_io import header
from service.http.responses import Reply, dump_json
from service.http.serving import Prepared, Resolver, serve
from service.http.state import ServiceState
from service.inference.batcher import BatchResult
from service.inputs.body import OBJECTIVE_KEYS
from service.inputs.pipeline import batch_from_images
from service.inputs.v2_request import (
    BYTES,
    InferRequest,
    RequestedOutput,
    client_timeout_s,
    datatype_of,
    model_batch,
    pack_bytes,
    parse_infer_request,
)
from service.repository.registry import ServedModel
from service.repository.routing import parse_objective
from service.settings import Settings

# POST /v2/models/auto/infer with parameters.latency_budget_ms / min_accuracy routes by objective
# (unless a model of that name is served).
ROUTED_NAME = "auto"
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
BINARY_MEDIA_TYPE = "application/octet-stream"


def is_infer(path: str) -> bool:
    """True for the path of an infer request."""
    return path.startswith("/v2/models/") and path.endswith("/infer")


def model_spec(name: str, version: str | None) -> str:
    """The registry's selector of a model (and version) named in a v2 path: a name holding the
    registry's own ``name:version`` separator names no model (versions go in ``/versions/``)."""
    if ":" in name:
        raise NotFound(f"unknown model {name!r}", code="unknown_model")
    return name if not version else f"{name}:{version}"


async def infer(scope: Scope, receive: Receive, state: ServiceState) -> Reply:
    """Answer one infer request; never raises a ServiceError."""
    settings = state.settings
    match = INFER_PATH.match(scope["path"])

    async def prepare(body: bytes, models: Resolver) -> Prepared[Reply]:
        if match is None:  # /v2/models/a/b/infer: no such model or route
            raise NotFound(f"{scope['path']} names no model", code="not_found")
        name, version = match.group(1), match.group(2)
        header_length = header(scope, b"inference-header-content-length")
        note = None
        if is_routed(name, version, models):
            request = parse_infer_request(body, header_length, None)
            served, note = route(request, models)
        else:
            served = models.resolve(model_spec(name, version))
            spec = served.card.input
            raw_input = (spec.name, datatype_of(np.dtype(spec.dtype)), tuple(spec.shape))
            request = parse_infer_request(body, header_length, raw_input)
        timeout_s = client_timeout_s(request.parameters)
        batch = await request_batch(request, served, settings)
        return Prepared(
            served, batch, lambda result, _: answer(served, request, result, note), timeout_s
        )

    return await serve(scope, receive, state, prepare, dialect="v2")


def is_routed(name: str, version: str | None, models: Resolver) -> bool:
    """Whether an infer request for ``name`` is routed by its objective: model ``auto``, when
    no model of that name is served (it has no versions to name)."""
    if name != ROUTED_NAME or models.knows(name):
        return False
    if version:
        raise BadRequest(f"model {ROUTED_NAME!r} routes by objective: it has no versions")
    return True


def route(request: InferRequest, models: Resolver) -> tuple[ServedModel, dict[str, Any]]:
    """The model version a routed request's parameters (``latency_budget_ms``,
    ``min_accuracy``) choose, and the note of how."""
    fields = {k: request.parameters[k] for k in OBJECTIVE_KEYS if k in request.parameters}
    objective = parse_objective(fields)
    if objective is None:
        raise BadRequest(
            f"model {ROUTED_NAME!r} routes by objective: give parameters."
            "latency_budget_ms and/or min_accuracy"
        )
    return models.route(objective, routed_inputs(request))


async def request_batch(
    request: InferRequest, served: ServedModel, settings: Settings
) -> np.ndarray:
    """The model's batch of an infer request: its one input checked against the model's (and
    any output it asks for), BYTES images decoded and preprocessed as /predict does it, numbers
    checked and converted; at most ``max_inputs_per_request`` inputs."""
    spec = served.card.input
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = [i.name for i in request.inputs]
        raise BadRequest(f"model {served.name!r} takes one input, {spec.name!r}; got {names}")
    for output in request.outputs or []:
        if output.name != served.card.output.name:
            raise BadRequest(
                f"model {served.name!r} has one output, {served.card.output.name!r}; "
                f"not {output.name!r}"
            )
    tensor = request.inputs[0]
    limit = settings.max_inputs_per_request
    if tensor.datatype == BYTES:
        assert tensor.elements is not None
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequest(f"BYTES input {spec.name!r}: shape must be [N] or [N, 1] images")
        return await batch_from_images(
            tensor.elements,
            spec,
            limit,
            settings.max_image_pixels,
            settings.max_decoded_pixels,
        )
    batch = model_batch(tensor, tuple(spec.shape), np.dtype(spec.dtype))
    if len(batch) > limit:
        raise PayloadTooLarge(f"at most {limit} inputs per request", code="too_many_inputs")
    return batch


def routed_inputs(request: InferRequest) -> int:
    """How many inputs a routed request carries, before any is decoded: the first axis of its
    BYTES images or of its [N,C,H,W] tensor (a [C,H,W] one is one input)."""
    if len(request.inputs) != 1:
        return 1  # refused once a model is chosen
    shape = request.inputs[0].shape
    if request.inputs[0].datatype == BYTES or len(shape) == 4:
        return max(1, shape[0]) if shape else 1
    return 1


def answer(
    served: ServedModel,
    request: InferRequest,
    result: BatchResult,
    routing: dict[str, Any] | None = None,
) -> Reply:
    """The infer response: JSON, or a JSON header followed by the binary outputs."""
    outputs = request.outputs or [RequestedOutput(served.card.output.name)]
    values = np.ascontiguousarray(result.outputs, dtype=np.float32)
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in outputs:
        binary = output.binary if output.binary is not None else request.binary_output
        if output.classification:
            k = min(output.classification, values.shape[1])
            entry, blob = _classification(output.name, values, served.card.labels, k, binary)
        else:
            entry, blob = _tensor(output.name, values, binary)
        described.append(entry)
        if blob is not None:
            blobs.append(blob)
    head: dict[str, Any] = {
        "model_name": served.name,
        "model_version": str(served.version),
        "outputs": described,
    }
    if request.id is not None:
        head["id"] = request.id
    if routing is not None:
        head["parameters"] = {"routing": routing}
    header_bytes = dump_json(head)
    if not blobs:
        return Reply(200, header_bytes)
    return Reply(
        200,
        header_bytes + b"".join(blobs),
        (("Inference-Header-Content-Length", str(len(header_bytes))),),
        content_type=BINARY_MEDIA_TYPE,
    )


def _tensor(name: str, values: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(values.shape)}
    if binary:
        blob = values.astype("<f4", copy=False).tobytes()
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry["data"] = values.ravel().tolist()
    return entry, None


def top_k_strings(values: np.ndarray, labels: tuple[str, ...], k: int) -> list[str]:
    """The classification extension's answer: each row's top ``k`` as ``"value:index:label"``,
    row after row, as Triton gives them."""
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return [f"{values[r, i]:f}:{i}:{labels[i]}" for r in range(len(values)) for i in order[r]]


def _classification(
    name: str, values: np.ndarray, labels: tuple[str, ...], k: int, binary: bool
) -> tuple[dict[str, Any], bytes | None]:
    strings = top_k_strings(values, labels, k)
    entry: dict[str, Any] = {"name": name, "datatype": BYTES, "shape": [len(values), k]}
    if binary:
        blob = pack_bytes([s.encode("utf-8") for s in strings])
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry["data"] = strings
    return entry, None
