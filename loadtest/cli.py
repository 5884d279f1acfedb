"""What every ``python -m loadtest.<command>`` shares: argument types and one-line user errors."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpx

from loadtest.leanhttp import LeanHTTPError
from loadtest.server import ServiceStartError
from service.contract.model_card import ModelRepositoryError


class CommandError(Exception):
    """A failure the user can act on (bad input, nothing to measure), said in one line."""


# What a user's mistake or environment raises: said in one line, exit status 2. Anything else is
# a bug in the command and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CommandError,
    ServiceStartError,
    ModelRepositoryError,
    httpx.HTTPError,
    httpx.InvalidURL,
    LeanHTTPError,
    OSError,
    ValueError,
)


def positive_int(text: str) -> int:
    """argparse type: an integer above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


def http_url(text: str) -> str:
    """argparse type: an ``http://`` or ``https://`` URL with a host, without its trailing slash."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL like http://127.0.0.1:8000")
    return text.rstrip("/")


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` on stderr; return ``code`` as the exit status."""
    print(f"error: {message}", file=sys.stderr)
    return code


def describe(exc: BaseException) -> str:
    """One line naming the problem: the file of an OSError, the URL of a failed request."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    if isinstance(exc, httpx.RequestError):
        try:
            return f"{exc.request.method} {exc.request.url}: {text}"
        except RuntimeError:  # no request attached
            pass
    return text


def run_cli(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``, with a user's error said as one ``error: ...`` line and exit status 2."""
    try:
        return main(None if argv is None else list(argv))
    except USER_ERRORS as exc:
        return fail(describe(exc))
