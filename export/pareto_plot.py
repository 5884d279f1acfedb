"""pareto.png: top-1 against batch-1 latency, the frontier drawn, every point named legibly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from export.pareto import class_latency_ms, latency_ms, pareto_front
from service.contract.model_card import ModelCard

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, y up

GAP_PX = 1.5  # the least room between two names
LEADER_PX = 3.0  # a name moved further than this from its point gets a line to it
LEADER_LINE = {"arrowstyle": "-", "color": "0.6", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3,
               "relpos": (0.0, 0.5)}  # fmt: skip
FRONT_DROP_PX = 8.0  # how far under its point a front model's name starts


def spread_labels(boxes: Sequence[Box], gap: float = GAP_PX, rounds: int = 500) -> list[float]:
    """Vertical shifts (pixels) that leave no two boxes overlapping, each moved as little as the
    others allow: overlapping pairs are pushed apart, half each way, until none overlap.

    Names of a crowded cluster (five WRN-16-1 networks within 0.1 ms and a point of top-1) end up
    stacked in a column beside it instead of printed over each other.
    """
    shifts = [0.0] * len(boxes)
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3], i))
    for _ in range(rounds):
        moved = False
        for a_pos, a in enumerate(order):
            for b in order[a_pos + 1 :]:
                if boxes[a][2] <= boxes[b][0] or boxes[b][2] <= boxes[a][0]:
                    continue  # side by side: no clash whatever the heights
                # a is the lower name by its point's height, and stays the lower one
                overlap = boxes[a][3] + shifts[a] + gap - (boxes[b][1] + shifts[b])
                if overlap > 1e-6:
                    shifts[a] -= overlap / 2
                    shifts[b] += overlap / 2
                    moved = True
        if not moved:
            break
    return shifts


def plot_pareto(cards: Sequence[ModelCard], path: Path, title: str) -> Path:
    """Top-1 against batch-1 latency on a log axis (a teacher is ten times a student), the
    frontier as a step line at each same-work class's median latency, every point named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    speed = class_latency_ms(cards)
    front = pareto_front(cards, speed)
    xs = [latency_ms(c) for c in cards]
    ys = [c.metrics.top1 * 100 for c in cards]
    fig, ax = plt.subplots(figsize=(11, 7), dpi=110)
    ax.set_xscale("log")
    finite = [x for x in xs if x != float("inf")] or [1.0]
    # room on the right for the names of the slowest points, and above and below the extremes
    ax.set_xlim(min(finite) / 1.3, max(finite) * 2.6)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    for card, x, y in zip(cards, xs, ys, strict=True):
        on = card.name in front
        ax.scatter(
            x,
            y,
            s=70 if on else 30,
            marker="*" if on else "o",
            color="tab:red" if on else "tab:blue",
            zorder=3,
        )
    frontier = sorted((c for c in cards if c.name in front), key=lambda c: speed[c.name])
    if frontier:
        ax.step(
            [speed[c.name] for c in frontier],
            [c.metrics.top1 * 100 for c in frontier],
            where="post",
            color="tab:red",
            linewidth=1.2,
            label="Pareto frontier (models doing the same work at their median latency)",
        )
        ax.legend(loc="lower right", fontsize=8)
    machines = "; ".join(sorted({c.profile.machine for c in cards}))
    ax.set_xlabel("p50 latency at batch 1 (ms, ONNX Runtime, log scale)")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(f"{title}\n{machines}", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    _name_points(fig, ax, cards, xs, ys, front)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _name(ax: Axes, name: str, xy: tuple[float, float], dy: float, bold: bool = False,
          leader: bool = False) -> Annotation:  # fmt: skip
    """One point's name, ``dy`` pixels above its right side; with a thin line back when moved."""
    return ax.annotate(
        name,
        xy,
        xytext=(8, dy),
        textcoords="offset pixels",
        va="center",
        fontsize=7,
        fontweight="bold" if bold else "normal",
        zorder=4,
        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
        arrowprops=LEADER_LINE if leader else None,
    )


def _name_points(
    fig: Figure,
    ax: Axes,
    cards: Sequence[ModelCard],
    xs: Sequence[float],
    ys: Sequence[float],
    front: set[str],
) -> None:
    """Write each name to the right of its point, spreading the names that would overprint and
    drawing a thin line from a moved name back to its point."""
    points = [(c, (x, y)) for c, x, y in zip(cards, xs, ys, strict=True)]
    # a front point's name sits under the frontier, which leaves it sideways at the point's height
    base = [-FRONT_DROP_PX if c.name in front else 0.0 for c in cards]
    trial = [_name(ax, c.name, xy, dy) for (c, xy), dy in zip(points, base, strict=True)]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes: list[Box] = []
    for text in trial:
        extent = text.get_window_extent(renderer)
        boxes.append((extent.x0, extent.y0, extent.x1, extent.y1))
        text.remove()
    shifts = spread_labels(boxes)
    for (card, xy), dy, shift in zip(points, base, shifts, strict=True):
        _name(ax, card.name, xy, dy + shift, card.name in front, abs(shift) > LEADER_PX)
