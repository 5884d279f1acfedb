"""Accuracy and latency of ONNX artifacts measured with ONNX Runtime on the full test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.evaluate import (
    BATCH_SIZES,
    calibration,
    evaluate_accuracy,
    machine_description,
    make_session,
    pack_hits,
    profile_latency,
    topk_accuracy,
    unpack_hits,
)
from service.contract.model_card import EvalMetrics, read_manifest
from tests.support.onnx_repo import digits_input_spec, digits_uint8_split


def test_topk_accuracy_by_hand() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0


def test_calibration_by_hand() -> None:
    # Two images, both answered with softmax 0.9 for the top class; one is right: the single
    # occupied bin has accuracy 0.5 and confidence 0.9, so ECE = 0.4.
    p = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    logits = np.log(p) + 3.0  # a shift changes no softmax
    ece, nll = calibration(logits, np.array([0, 1]))
    assert ece == pytest.approx(0.4)
    assert nll == pytest.approx(-(np.log(0.9) + np.log(0.05)) / 2)
    # Calibrated: 0.75 confidence, right on three of four; and a perfect certain answer.
    q = np.log(np.array([[0.75, 0.25]] * 4))
    assert calibration(q, np.array([0, 0, 0, 1]))[0] == pytest.approx(0.0)
    assert calibration(np.array([[50.0, 0.0]]), np.array([0])) == pytest.approx((0.0, 0.0))
    # Confidence 1.0 falls in the last bin, not past it.
    assert calibration(np.array([[50.0, 0.0]]), np.array([1]))[0] == pytest.approx(1.0)


def test_accuracy_on_the_full_split_matches_the_fixture_card(digits_repo: Path) -> None:
    _, x_te, _, y_te = digits_uint8_split()
    card = read_manifest(digits_repo / "digits-logreg")
    session = make_session(digits_repo / "digits-logreg" / "2" / "model.onnx", threads=1)
    metrics = evaluate_accuracy(session, card.input, x_te, y_te, dataset="digits")
    assert metrics.n == len(y_te) == 360
    assert metrics.top1 == pytest.approx(card.metrics.top1)
    assert metrics.top5 is not None and metrics.top5 >= metrics.top1
    assert metrics.measured_with.startswith("onnxruntime ")
    assert metrics.ece == pytest.approx(card.metrics.ece) and 0 < metrics.ece < 1
    assert metrics.nll is not None and metrics.nll > 0
    with pytest.raises(ValueError, match="as many labels as images"):
        evaluate_accuracy(session, card.input, x_te, y_te[:3], dataset="digits")


def test_latency_profile_rows_and_setup(digits_repo: Path) -> None:
    _, x_te, _, _ = digits_uint8_split()
    session = make_session(digits_repo / "digits-slow" / "1" / "model.onnx", threads=1)
    profile = profile_latency(
        session, digits_input_spec(), x_te, threads=1, min_runs=5, min_seconds=0.0
    )
    assert [r.batch_size for r in profile.rows] == list(BATCH_SIZES) == [1, 8, 32, 128]
    for row in profile.rows:
        assert 0 < row.p50_ms <= row.p99_ms
        assert row.images_per_s == pytest.approx(row.batch_size * 1000 / row.p50_ms)
    assert profile.provider == "CPUExecutionProvider" and profile.threads == 1
    assert profile.machine == machine_description() and "cores" in profile.machine


def test_unknown_provider_is_refused(digits_repo: Path) -> None:
    with pytest.raises(ValueError, match="provider 'NopeExecutionProvider' is not available"):
        make_session(digits_repo / "digits-slow" / "1" / "model.onnx", "NopeExecutionProvider")


def test_the_card_records_which_images_the_model_gets_right(digits_repo: Path) -> None:
    _, x_te, _, y_te = digits_uint8_split()
    card = read_manifest(digits_repo / "digits-logreg")
    session = make_session(digits_repo / "digits-logreg" / "2" / "model.onnx", threads=1)
    metrics = evaluate_accuracy(session, card.input, x_te, y_te, dataset="digits")
    assert metrics.correct is not None
    hits = unpack_hits(metrics.correct, metrics.n)
    # by hand: the session's own logits, argmax against the labels
    x = (x_te.astype(np.float32) / 255.0 - 0.5) / 0.25
    logits = session.run(None, {card.input.name: x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_array_equal(hits, logits.argmax(axis=1) == y_te)
    assert hits.mean() == pytest.approx(metrics.top1)
    fields = metrics.model_dump()
    with pytest.raises(ValueError, match="bytes, 45 for 360 images"):
        EvalMetrics.model_validate({**fields, "correct": pack_hits(hits[:-8])})
    with pytest.raises(ValueError, match="not base64"):
        EvalMetrics.model_validate({**fields, "correct": "not base64!"})
    with pytest.raises(ValueError, match=r"marks \d+ of 360 images right"):
        EvalMetrics.model_validate({**fields, "correct": pack_hits(~hits)})


def test_hits_pack_most_significant_bit_first_and_pad_with_zeros() -> None:
    """The card's documented layout (numpy.packbits' default), on a split not a multiple of 8."""
    hits = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    assert pack_hits(hits) == "gIA="  # bytes 0x80 0x80
    np.testing.assert_array_equal(unpack_hits("gIA=", 9), hits)
    fields = {"dataset": "digits", "split": "test", "n": 9, "top1": 2 / 9, "measured_with": "x"}
    assert EvalMetrics.model_validate({**fields, "correct": "gIA="}).correct == "gIA="
    with pytest.raises(ValueError, match="sets bits past its 9 images"):
        EvalMetrics.model_validate({**fields, "correct": "gIE="})  # 0x80 0x81
    with pytest.raises(ValueError, match="marks 2 of 9 images right, top1"):
        EvalMetrics.model_validate({**fields, "top1": 3 / 9, "correct": "gIA="})
