"""The benchmark command: model choice, request body, client and verdicts (no timing asserts)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from loadtest.raw import RawCeiling, RawCell, RawLayout, RawResult
from loadtest.served_report import (
    STUDENT_TARGETS,
    TEACHER_TARGETS,
    Row,
    raw_rows,
    report,
    targets_for,
)
from loadtest.served_vs_raw import RawOrt, Server, pick_model, sample_png

pytestmark = pytest.mark.timeout(120)


def test_pick_model_defaults_to_the_most_macs(digits_repo: Path) -> None:
    card, path = pick_model(digits_repo, None)
    assert card.name == "digits-slow" and path == digits_repo / "digits-slow" / "1" / "model.onnx"
    card, path = pick_model(digits_repo, "digits-logreg")
    assert path.parent.name == "2"  # the highest version
    with pytest.raises(SystemExit, match="no model 'nope'"):
        pick_model(digits_repo, "nope")


def test_sample_png_matches_the_model_input(digits_repo: Path) -> None:
    card, _ = pick_model(digits_repo, None)
    image = Image.open(io.BytesIO(sample_png(card)))
    assert image.size == (8, 8) and image.mode == "L"


def test_report_verdicts_follow_the_targets(digits_repo: Path) -> None:
    card, _ = pick_model(digits_repo, None)
    rows = [
        Row("raw ORT", 1, 1000.0, 1.0, 2.0, 1.0),
        Row("raw ORT", 64, 1000.0, 60.0, 70.0, 64.0),
        Row("batching on", 1, 500.0, 2.4, 3.0, 1.0),
        Row("batching on", 64, 690.0, 90.0, 99.0, 40.0),
    ]
    text = report(card, 1, rows, (1.0, 2.0), targets=STUDENT_TARGETS)
    assert "69.0% of raw ORT at batch 64 (target for a student >= 50%: met)" in text
    assert "p50 +1.40 ms over raw batch-1 (target for a student <= +0.5 ms: NOT met)" in text
    assert "load average 1.0 before, 2.0 after" in text
    assert "| batching on | 64 | 690 | 90.00 | 99.00 | 40.0 | 0 |" in text


def test_verdicts_compare_with_the_raw_best_when_searched(digits_repo: Path) -> None:
    card, _ = pick_model(digits_repo, None)
    lone, wide = RawLayout(1, 2, 1), RawLayout(2, 1, 2)
    best = RawCeiling(
        (
            RawCell(lone, RawResult(1, 1000.0, 1.0, 2.0, 1.2)),
            RawCell(wide, RawResult(1, 1150.0, 1.3, 2.0)),
            RawCell(lone, RawResult(32, 900.0, 35.0, 40.0)),
            RawCell(wide, RawResult(32, 1200.0, 50.0, 60.0)),
            RawCell(wide, RawResult(64, 1100.0, 110.0, 120.0)),
        )
    )
    rows = [
        *raw_rows(best, [1, 64]),
        Row("batching on", 1, 500.0, 2.4, 3.0, 1.0),
        Row("batching on", 64, 900.0, 90.0, 99.0, 40.0),
    ]
    text = report(card, "auto", rows, None, best=best)
    assert "raw best: 2 sessions x 1 thread, batch 32, 1,200 img/s" in text
    assert "75.0% of the raw best (2 sessions x 1 thread, batch 32, 1,200 img/s)" in text
    assert "(target for the largest model or a variant of it >= 90%: NOT met)" in text
    assert "p50 +1.40 ms over the best lone raw batch-1 call (1 session x 2 threads" in text
    assert "(target for the largest model or a variant of it <= +1.0 ms: NOT met)" in text
    assert "| raw ORT | 64 | 1,100 | 110.00 | 120.00 | 64.0 | 0 |" in text
    assert "service intra-op threads auto" in text


def test_the_largest_model_and_its_variants_get_the_teachers_targets(
    digits_repo: Path,
) -> None:
    slow, _ = pick_model(digits_repo, "digits-slow")  # the hidden layer: the most MACs
    small, _ = pick_model(digits_repo, "digits-logreg")
    assert targets_for(slow, digits_repo) is TEACHER_TARGETS
    assert targets_for(small, digits_repo) is STUDENT_TARGETS
    variant = small.model_copy(update={"derived_from": "digits-slow"})
    assert targets_for(variant, digits_repo) is TEACHER_TARGETS


@pytest.mark.slow
def test_client_drives_a_real_server_without_errors(digits_repo: Path) -> None:
    card, path = pick_model(digits_repo, None)
    server = Server(digits_repo, card, {"ROCKETSERVE_MAX_INPUTS_PER_REQUEST": "1"}, "batching on")
    try:
        server.wait_ready()
        row = server.measure(4, 0.3)
    finally:
        server.stop()
    assert row.errors == 0 and row.images_per_s > 0 and row.mean_batch is not None
    assert row.p50_ms <= row.p99_ms
    raw = RawOrt(card, path, 1).measure(8, 0.05)
    assert raw.concurrency == 8 and raw.images_per_s > 0
