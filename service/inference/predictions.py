"""Turn model outputs into ranked predictions: softmax per batch, top-k per input."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, classes] logits, in float32, stable for large values."""
    z = logits.astype(np.float32, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def top_k(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[list[dict[str, Any]]]:
    """``k`` best classes of each row, best first, as {"label", "index", "score"} dicts."""
    k = min(k, probs.shape[1])
    if probs.shape[1] <= 64:  # a full sort of a few classes is cheaper than partitioning
        idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    else:
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    scores = np.take_along_axis(probs, idx, axis=1).tolist()
    return [
        [
            {"label": labels[i], "index": i, "score": s}
            for i, s in zip(row_idx, row_scores, strict=True)
        ]
        for row_idx, row_scores in zip(idx.tolist(), scores, strict=True)
    ]
