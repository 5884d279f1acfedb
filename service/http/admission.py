"""AdmissionGate: serves the prediction requests ahead of the routing, or sheds them (503).

POST /predict and the Open Inference Protocol's POST /v2/models/.../infer are the requests that
cost CPU; both enter here, and only here.
"""

from __future__ import annotations

import logging
import time

from starlette.types import Receive, Scope, Send

from service.errors import ServiceError, Unavailable
from service.http.asgi_io import header
from service.http.predict import predict
from service.http.responses import (
    INTERNAL_ERROR,
    MIN_COMPRESSED_BYTES,
    Reply,
    compressed,
    error_reply,
)
from service.http.state import ServiceState
from service.http.uvicorn_hooks import ARRIVAL_KEY
from service.http.v2_infer import infer, is_infer

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict"

_NOT_ALLOWED = ServiceError(
    "Method Not Allowed", code="method_not_allowed", status=405, headers={"Allow": "POST"}
)
# Ready-made answers, by dialect: this service's API ("rest") and the v2 protocol's.
_CANNED: dict[str, dict[str, Reply]] = {
    dialect: {
        "internal": error_reply(INTERNAL_ERROR, dialect),
        "not_allowed": error_reply(_NOT_ALLOWED, dialect),
    }
    for dialect in ("rest", "v2")
}


def is_predict(scope: Scope) -> bool:
    """True for the HTTP calls the gate answers: any method on /predict or on an infer path
    (only POST is served)."""
    return scope["type"] == "http" and (scope["path"] == PREDICT_PATH or is_infer(scope["path"]))


class AdmissionGate:
    """The cheapest place to refuse a /predict request, and the place that serves it.

    A /predict request is refused, unread, when ``max_in_flight`` requests are already in the
    process, or when it waited for the event loop longer than ``max_loop_wait_ms`` (the loop is
    saturated: admitting more would only make every admitted request late). Refusing here skips
    routing, body parsing and decoding, so shedding costs little and the loop catches up. An
    admitted request is served by ``service.http.predict`` in plain ASGI: FastAPI's middleware
    stack, Starlette's routing and its request objects were a third of a small model's CPU per
    request.
    """

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        settings = state.settings
        self._max_in_flight = settings.in_flight_limit
        self._max_wait = settings.loop_wait_limit_ms / 1000.0
        self._retry_after = str(settings.retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse or serve one prediction request; counts the requests in flight."""
        handler, dialect = (predict, "rest") if scope["path"] == PREDICT_PATH else (infer, "v2")
        canned = _CANNED[dialect]
        if scope["method"] != "POST":
            await canned["not_allowed"].send(send)
            return
        state = self.state
        reason = self._refusal(scope)
        if reason is not None:
            await self._refuse(send, dialect, *reason)
            state.metrics.requests.labels("unknown", "", "503").inc()
            return
        state.predicting += 1
        try:
            try:
                reply = await handler(scope, receive, state)
            except Exception:
                log.exception("unhandled error in %s", scope["path"])
                reply = canned["internal"]
                state.metrics.requests.labels("unknown", "", "500").inc()
            if len(reply.body) >= MIN_COMPRESSED_BYTES:  # the header is read only then
                reply = compressed(reply, header(scope, b"accept-encoding"))
            await reply.send(send)
        finally:
            state.predicting -= 1

    def _refusal(self, scope: Scope) -> tuple[str, str] | None:
        limit = self._max_in_flight
        if limit and self.state.predicting >= limit:
            return "overloaded", f"{limit} requests are in flight; retry later"
        stamp = (scope.get("state") or {}).get(ARRIVAL_KEY)
        if isinstance(stamp, float):
            waited = time.monotonic() - stamp
            if waited > self._max_wait:
                return "overloaded", (
                    f"the server is saturated (request waited {waited * 1000:.0f} ms for the "
                    "event loop); retry later"
                )
        return None

    async def _refuse(self, send: Send, dialect: str, code: str, message: str) -> None:
        refusal = Unavailable(message, code=code, headers={"Retry-After": self._retry_after})
        await error_reply(refusal, dialect).send(send)
