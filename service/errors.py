"""One ServiceError base: every error the service answers, with its HTTP status and a code.

Raised anywhere in the service; rendered into the JSON error body in one place only
(``service.http.responses``). No web framework here: the lower layers raise these without
knowing how they travel.
"""

from __future__ import annotations


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


class RequestTimeout(ServiceError):
    """The request body did not arrive in time (408); the connection is closed."""

    status = 408
    code = "body_timeout"


class ClientGone(ServiceError):
    """The client disconnected before its answer was ready (499, never sent: counted only)."""

    status = 499
    code = "client_closed_request"


class InferenceFailed(ServiceError):
    """The model raised while running a batch: a server fault, failing only that batch (500)."""

    status = 500
    code = "inference_failed"
