"""An already preprocessed tensor from a request, checked against the card: shape, dtype, finite."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.contract.model_card import InputSpec
from service.errors import Unprocessable


def tensor_to_batch(value: Any, spec: InputSpec) -> np.ndarray:
    """Check an already preprocessed tensor ([C,H,W] or [N,C,H,W]) and return it as a batch."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise Unprocessable(
            "tensor is not a rectangular array of numbers", code="invalid_tensor"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise Unprocessable(
            f"tensor must hold numbers, got {arr.dtype.name} values", code="invalid_tensor"
        )
    want = tuple(spec.shape)
    if arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise Unprocessable(
            f"tensor must have rank 3 [C,H,W] or 4 [N,C,H,W], got rank {arr.ndim}",
            code="invalid_tensor",
        )
    if tuple(arr.shape[1:]) != want or arr.shape[0] < 1:
        raise Unprocessable(
            f"tensor shape {list(arr.shape)} does not match the model's [N, {want[0]}, "
            f"{want[1]}, {want[2]}] (N >= 1)",
            code="invalid_tensor",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: caught
        batch = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
    if not np.isfinite(batch).all():
        raise Unprocessable("tensor contains NaN or infinity", code="invalid_tensor")
    return batch
