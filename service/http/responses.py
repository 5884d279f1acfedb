"""Every answer the service sends, rendered in one place: JSON bodies, and errors from ServiceError.

``Reply`` is a finished answer (status, JSON bytes, extra headers) that the plain-ASGI
``/predict`` path sends itself; ``as_response`` hands the same bytes to FastAPI for the other
routes. ``error_reply`` is the one renderer of an error: the ``/predict`` path, the admission
gate and FastAPI's exception handlers (unknown route, wrong method, validation, a bug) all go
through it, so every error answer has the same body and headers.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.errors import ServiceError

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
_JSON = (b"content-type", JSON_MEDIA_TYPE.encode())


def dump_json(content: Any) -> bytes:
    """Compact UTF-8 JSON (no NaN), as Starlette's JSONResponse renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished answer: status, body bytes (JSON unless said otherwise) and extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = JSON_MEDIA_TYPE

    async def send(self, send: Send) -> None:
        """Write this answer as the two ASGI response messages."""
        kind = (
            _JSON
            if self.content_type == JSON_MEDIA_TYPE
            else (b"content-type", self.content_type.encode())
        )
        headers = [kind, (b"content-length", str(len(self.body)).encode())]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def as_response(self) -> Response:
        """The same answer as a Starlette Response (for FastAPI routes and handlers)."""
        return Response(self.body, self.status, dict(self.headers), media_type=self.content_type)


# Answers this long or longer are compressed when the client asks (Accept-Encoding); shorter ones
# would gain less than compressing costs (an answer of one image's top-k is ~200 bytes).
MIN_COMPRESSED_BYTES = 1024


def accepted_coding(accept_encoding: str) -> str | None:
    """The content coding to answer with, from an Accept-Encoding header: gzip or deflate,
    whichever the client weighs higher (gzip on a tie, and for ``*``); None when it accepts
    neither (absent, or ``q=0``)."""
    best, best_q = None, 0.0
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        coding = {"x-gzip": "gzip", "*": "gzip"}.get(coding.strip(), coding.strip())
        if coding not in ("gzip", "deflate"):
            continue
        q = 1.0
        name, _, value = params.partition("=")
        if name.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
        if q <= 0:  # "not acceptable"
            continue
        if q > best_q or (q == best_q and coding == "gzip"):
            best, best_q = coding, q
    return best


def compressed(reply: Reply, accept_encoding: str | None) -> Reply:
    """``reply`` compressed with the coding the client accepts (level 1: the answer is small, and
    the time is the server's), when it is long enough to gain; else ``reply`` itself."""
    if len(reply.body) < MIN_COMPRESSED_BYTES or not accept_encoding:
        return reply
    coding = accepted_coding(accept_encoding)
    if coding is None:
        return reply
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    packer = zlib.compressobj(1, zlib.DEFLATED, wbits)
    body = packer.compress(reply.body) + packer.flush()
    headers = (*reply.headers, ("Content-Encoding", coding), ("Vary", "Accept-Encoding"))
    return Reply(reply.status, body, headers, reply.content_type)


def json_reply(content: Any, status: int = 200) -> Reply:
    """A JSON answer."""
    return Reply(status, dump_json(content))


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of every error answer: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}


def error_reply(exc: ServiceError, dialect: str = "rest") -> Reply:
    """The answer of a ServiceError: its status, the error body and its headers.

    ``dialect`` "rest" (this service's API): ``{"error": {"code", "message"}}``; "v2" (the Open
    Inference Protocol, whose clients read exactly this key): ``{"error": "message"}``.
    """
    content: Any = {"error": exc.message} if dialect == "v2" else error_body(exc.code, exc.message)
    return Reply(exc.status, dump_json(content), tuple(exc.headers.items()))


INTERNAL_ERROR = ServiceError("internal server error")  # status 500, code internal_error

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _from_http_exception(exc: StarletteHTTPException) -> ServiceError:
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return ServiceError(
        str(exc.detail), code=code, status=exc.status_code, headers=dict(exc.headers or {})
    )


def _from_validation_error(exc: RequestValidationError) -> ServiceError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return ServiceError(f"{where}: {first.get('msg')}", code="invalid_input", status=422)


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ServiceError):
        error = exc
    elif isinstance(exc, StarletteHTTPException):
        error = _from_http_exception(exc)
    elif isinstance(exc, RequestValidationError):
        error = _from_validation_error(exc)
    else:
        log.exception("unhandled error", exc_info=exc)
        error = INTERNAL_ERROR
    if error.status >= 500:
        # Counted with the predictions, so that the error-ratio alert sees every server fault.
        service = getattr(request.app.state, "service", None)
        if service is not None:
            service.metrics.requests.labels("unknown", "", str(error.status)).inc()
    dialect = "v2" if request.url.path.startswith("/v2") else "rest"
    return error_reply(error, dialect).as_response()


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer of ``app``'s routes go through ``error_reply``."""
    for kind in (ServiceError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, _handle)
