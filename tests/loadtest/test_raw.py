"""The raw ceiling: the best over thread layouts and batch sizes, and the report that names it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest.payloads import DATA_DIR, load_images
from loadtest.raw import (
    SEARCH_BATCH_SIZES,
    RawCeiling,
    RawCell,
    RawLayout,
    RawResult,
    layouts_for,
    raw_ceiling,
)

ONE = RawLayout(1, 1, 1)
WIDE = RawLayout(1, 2, 1)
SESSIONS = RawLayout(2, 1, 2)
SHARED = RawLayout(1, 1, 2)


def cell(
    layout: RawLayout, batch: int, ips: float, p50: float, paused: float = math.nan
) -> RawCell:
    return RawCell(layout, RawResult(batch, ips, p50, 2 * p50, paused))


def test_layouts_cover_one_caller_and_every_core() -> None:
    assert layouts_for(1) == [ONE]
    assert layouts_for(2) == [ONE, WIDE, SESSIONS, SHARED]
    labels = [layout.label for layout in layouts_for(2)]
    assert labels == [
        "1 session x 1 thread",
        "1 session x 2 threads",
        "2 sessions x 1 thread",
        "1 session x 1 thread, 2 callers",
    ]


def test_the_ceiling_is_the_best_cell_and_the_report_names_it() -> None:
    ceiling = RawCeiling(
        (
            cell(ONE, 1, 3_000, 0.33, paused=0.40),
            cell(WIDE, 1, 4_000, 0.25, paused=0.30),
            cell(SESSIONS, 1, 5_500, 0.36),  # more images/s, but not a lone call
            cell(ONE, 32, 6_000, 5.3),
            cell(SESSIONS, 32, 7_100, 9.0),
            cell(SHARED, 32, 6_900, 9.2),
        )
    )
    assert ceiling.best.layout == SESSIONS and ceiling.best.result.batch_size == 32
    assert ceiling.best.result.images_per_s == max(c.result.images_per_s for c in ceiling.cells)
    assert ceiling.lone is not None and ceiling.lone.layout == WIDE
    assert ceiling.best_label == "2 sessions x 1 thread, batch 32"
    line = ceiling.describe()
    assert line.startswith("raw best: 2 sessions x 1 thread, batch 32, 7,100 img/s")
    assert "lone batch 1: 1 session x 2 threads, p50 0.25 ms (0.30 ms after 2 ms pauses)" in line
    at1 = ceiling.at(1)
    assert at1 is not None and at1.images_per_s == 5_500  # the most images/s at batch 1 ...
    assert (at1.p50_ms, at1.p50_paused_ms) == (0.25, 0.30)  # ... latencies of the lone caller
    at32 = ceiling.at(32)
    assert at32 is not None and at32.images_per_s == 7_100 and math.isnan(at32.p50_paused_ms)
    assert ceiling.at(8) is None


@pytest.mark.timeout(120)
def test_search_on_a_real_model_measures_every_layout_and_batch(digits_repo: Path) -> None:
    images = load_images(DATA_DIR / "digits")
    ceiling = raw_ceiling(digits_repo / "digits-slow", images, [1, 4], min_time_s=0.01, cores=2)
    measured = {(c.layout, c.result.batch_size) for c in ceiling.cells}
    sizes = sorted({1, 4, *SEARCH_BATCH_SIZES})
    assert measured == {(layout, bs) for layout in layouts_for(2) for bs in sizes}
    assert len(ceiling.cells) == len(measured)
    for c in ceiling.cells:
        assert c.result.images_per_s > 0 and 0 < c.result.p50_ms <= c.result.p99_ms
        lone_batch1 = c.result.batch_size == 1 and c.layout.callers == 1
        assert (c.result.p50_paused_ms > 0) if lone_batch1 else math.isnan(c.result.p50_paused_ms)
    best = max(ceiling.cells, key=lambda c: c.result.images_per_s)
    assert ceiling.best == best
    assert ceiling.describe().startswith(
        f"raw best: {best.layout.label}, batch {best.result.batch_size}, "
    )
    lone = ceiling.lone
    assert lone is not None and lone.layout.callers == 1 and lone.result.batch_size == 1
