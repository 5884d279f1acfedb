"""pareto.png's names: a crowded cluster's names are stacked, never printed over each other."""

from __future__ import annotations

import itertools

from export.pareto_plot import GAP_PX, spread_labels


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_crowded_names_are_stacked_apart_and_keep_their_order() -> None:
    # seven names 10 px tall whose points lie within 4 px of each other, as WRN-16-1's do
    boxes = [(100.0 + i, 300.0 + 0.6 * i, 260.0 + i, 310.0 + 0.6 * i) for i in range(7)]
    shifts = spread_labels(boxes)
    moved = [(x0, y0 + s, x1, y1 + s) for (x0, y0, x1, y1), s in zip(boxes, shifts, strict=True)]
    assert not any(_overlap(a, b) for a, b in itertools.combinations(moved, 2))
    bottoms = [b[1] for b in moved]
    assert bottoms == sorted(bottoms), "a higher point keeps the higher name"
    gaps = [later[1] - earlier[3] for earlier, later in itertools.pairwise(moved)]
    assert min(gaps) >= GAP_PX - 1e-6
    # the stack stays centred on the cluster instead of drifting away from it
    assert abs(sum(shifts)) < 1e-6


def test_names_that_do_not_clash_stay_where_they_are() -> None:
    boxes = [
        (100.0, 300.0, 200.0, 310.0),
        (210.0, 302.0, 300.0, 312.0),  # beside the first: same height, no clash
        (100.0, 400.0, 200.0, 410.0),  # above it
    ]
    assert spread_labels(boxes) == [0.0, 0.0, 0.0]
