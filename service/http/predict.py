"""POST /predict: this service's own dialect (multipart, JSON or raw images; top-k labels).

The body is read into the model's batch by the inputs pipeline; the answer ranks the softmax of
the model's outputs. The life of the request (deadline, body read, batching, disconnects, late
answers, metrics) is ``service.http.serving``'s, shared with the Open Inference Protocol.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope

from service.errors import Unprocessable
from service.http.asgi_io import header, query_params
from service.http.responses import Reply, json_reply
from service.http.serving import Prepared, Resolver, serve
from service.http.state import ServiceState
from service.inference.batcher import BatchResult
from service.inference.predictions import softmax, top_k
from service.inputs.body import OBJECTIVE_KEYS, parse_body, parse_top_k
from service.inputs.pipeline import to_batch
from service.repository.registry import ServedModel
from service.repository.routing import parse_objective


async def predict(scope: Scope, receive: Receive, state: ServiceState) -> Reply:
    """Classify every input of one /predict request with one model; never raises a ServiceError."""
    settings = state.settings

    async def prepare(body: bytes, models: Resolver) -> Prepared[Reply]:
        parsed = parse_body(header(scope, b"content-type"), body)
        query = query_params(scope)
        name = parsed.model or query.get("model")
        fields = {k: query[k] for k in OBJECTIVE_KEYS if k in query} | parsed.objective
        objective = parse_objective(fields)
        note = None
        if objective is None:
            served = models.resolve(name)
        elif name:
            raise Unprocessable(
                "name a model or give an objective (latency_budget_ms, min_accuracy), not both",
                code="invalid_objective",
            )
        else:
            served, note = models.route(objective, parsed.input_count())
        raw_k = parsed.top_k if parsed.top_k is not None else query.get("top_k")
        k = parse_top_k(raw_k, settings.default_top_k, len(served.card.labels))
        batch = await to_batch(parsed, served.card.input, settings)
        return Prepared(served, batch, lambda result, total: answer(served, k, result, total, note))

    return await serve(scope, receive, state, prepare)


def answer(
    served: ServedModel,
    k: int,
    result: BatchResult,
    total_s: float,
    routing: dict[str, Any] | None = None,
) -> Reply:
    """The 200 answer: top-k labels per input, which model served (and why, when routed),
    where the time went."""
    content: dict[str, Any] = {
        "model": served.name,
        "version": served.version,
        "predictions": top_k(softmax(result.outputs), served.card.labels, k),
        "timing": {
            "queue_ms": round(result.queue_s * 1000.0, 3),
            "inference_ms": round(result.inference_s * 1000.0, 3),
            "total_ms": round(total_s * 1000.0, 3),
        },
        "batch_size": result.batch_size,
    }
    if routing is not None:
        content["routing"] = routing
    return json_reply(content)
