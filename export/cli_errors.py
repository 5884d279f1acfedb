"""One-line errors and argparse value checks of the offline stage's commands: what users cause."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import yaml

from service.contract.model_card import ModelRepositoryError

# Errors a user can cause (bad paths, bad data, failed parity): one line, non-zero exit.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelRepositoryError,
    OSError,
    ValueError,
    RuntimeError,
    yaml.YAMLError,
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The user-facing error types, including those of the training half when importable."""
    extra: list[type[BaseException]] = []
    try:
        from export.checkpoint import ArtifactError
        from export.data import DatasetError

        extra += [ArtifactError, DatasetError]
    except ImportError:  # pragma: no cover - training half not installed
        pass
    return (*_USER_ERRORS, *extra)


def fail(message: str, code: int = 1) -> int:
    """Print ``error: message`` on stderr; return ``code`` as the exit status."""
    print(f"error: {message}", file=sys.stderr)
    return code


def guard(func: Callable[[argparse.Namespace], int]) -> Any:
    """Turn expected errors into a one-line message and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except BrokenPipeError:  # the reader went away (`| head`): __main__ stops quietly
            raise
        except user_errors() as exc:
            return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))

    run.__doc__ = func.__doc__
    return run


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (0 often meaning "all" or "default")."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def float_at_least(low: float) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low:g}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in its own messages
    return parse
