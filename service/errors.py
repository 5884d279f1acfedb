"""One ServiceError base (HTTP status + code) and the handlers that render JSON error bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The body cannot be read: empty, not an image, truncated, bad base64 or JSON (400)."""

    status = 400
    code = "bad_request"


class NotFound(ServiceError):
    """Unknown model or version (404)."""

    status = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    """Body, image or input count over a configured limit (413)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """Content type the service does not read (415)."""

    status = 415
    code = "unsupported_media_type"


class Unprocessable(ServiceError):
    """Readable but invalid: wrong tensor shape, dtype, rank, non-finite values, bad top_k (422)."""

    status = 422
    code = "invalid_input"


class Unavailable(ServiceError):
    """Queue full, shutting down or not ready (503)."""

    status = 503
    code = "unavailable"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its answer was ready (504)."""

    status = 504
    code = "deadline_exceeded"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body shared by every error answer."""
    return {"error": {"code": code, "message": message}}


def error_response(exc: ServiceError) -> JSONResponse:
    """Render a ServiceError."""
    return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse(
        error_body(codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail)),
        exc.status_code,
        headers=dict(exc.headers or {}),
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse(error_body("invalid_input", f"{where}: {first.get('msg')}"), 422)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal server error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error answer of ``app`` a JSON ``{"error": {...}}`` body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


class InferenceFailed(ServiceError):
    """The model raised while running a batch: a server fault, failing only that batch (500)."""

    status = 500
    code = "inference_failed"
