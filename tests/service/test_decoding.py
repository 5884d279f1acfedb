"""top_k parsing and ranking, independent of HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import Unprocessable
from service.inference.predictions import softmax, top_k
from service.inputs.body import parse_top_k


def test_parse_top_k() -> None:
    assert parse_top_k(None, 5, 10) == 5
    assert parse_top_k(None, 5, 3) == 3  # default capped by the number of labels
    assert parse_top_k("10", 5, 10) == 10 and parse_top_k(1, 5, 10) == 1
    for bad in (0, 11, -1, "x", 2.5, True, [1]):
        with pytest.raises(Unprocessable):
            parse_top_k(bad, 5, 10)


def test_top_k_ranks_like_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    probs = softmax(rng.standard_normal((6, 10)).astype(np.float32) * 3)
    labels = tuple("abcdefghij")
    for k in (1, 3, 10):
        ranked = top_k(probs, labels, k)
        for row, preds in zip(probs, ranked, strict=True):
            order = np.argsort(-row)[:k]
            assert [p["index"] for p in preds] == order.tolist()
            assert [p["label"] for p in preds] == [labels[i] for i in order]
            assert [p["score"] for p in preds] == pytest.approx(row[order].tolist())


def test_softmax_is_stable_for_large_logits() -> None:
    p = softmax(np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32))
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    assert p[0, 0] > p[0, 1] > p[0, 2]
