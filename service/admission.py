"""AdmissionGate: serves POST /predict without the router, or sheds it (503) when overloaded."""

from __future__ import annotations

import json
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_body
from service.protocol import ARRIVAL_KEY
from service.routes import ServiceState, predict

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict"


class AdmissionGate:
    """Pure ASGI middleware in front of the routes: the cheapest place to refuse a request.

    A /predict request is refused, unread, when ``max_in_flight`` requests are already in the
    process, or when it waited for the event loop longer than ``max_loop_wait_ms`` (the loop is
    saturated: admitting more would only make every admitted request late). Refusing here skips
    routing, body parsing and decoding, so shedding costs little and the loop catches up.
    """

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self._max_in_flight = settings.max_in_flight
        self._max_wait = settings.loop_wait_limit_ms / 1000.0
        self._retry_after = str(settings.retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse or serve one ASGI call; counts the /predict requests in flight."""
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = self.state
        reason = self._refusal(scope)
        if reason is not None:
            await self._refuse(send, *reason)
            state.metrics.requests.labels("unknown", "", "503").inc()
            return
        state.predicting += 1
        try:
            # Served from here, not through the router: Starlette's routing and FastAPI's
            # request handling were ~30 % of the CPU of a small-model request. The route stays
            # declared for the OpenAPI schema; predict() answers every ServiceError itself.
            try:
                response = await predict(Request(scope, receive))
            except Exception:
                log.exception("unhandled error in /predict")
                response = JSONResponse(error_body("internal_error", "internal server error"), 500)
            await response(scope, receive, send)
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

    async def _refuse(self, send: Send, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", self._retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
