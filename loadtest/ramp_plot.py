"""PNG plot of a ramp: share of the answers per model (stacked) and achieved p99 per step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.ramp_load import RampStep


def plot_ramp(
    steps: Sequence[RampStep],
    models: Sequence[str],
    budget_ms: float,
    path: Path,
    machine: str,
) -> Path:
    """Stacked bars of each model's share per concurrency step (``models`` bottom to top, most
    accurate first), the achieved p99 and the budget on a second axis, mean top-1 above."""
    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=80)
    xs = list(range(len(steps)))
    bottom = [0.0] * len(steps)
    cmap = plt.get_cmap("viridis")
    for i, key in enumerate(models):
        shares = [s.shares.get(key, 0.0) * 100.0 for s in steps]
        if not any(shares):
            continue
        color = cmap(i / max(len(models) - 1, 1))
        ax.bar(xs, shares, 0.7, bottom=bottom, color=color, label=key, edgecolor="white", lw=0.5)
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    for x, s in zip(xs, steps, strict=True):
        text = "no answer" if math.isnan(s.mean_accuracy) else f"{s.mean_accuracy * 100:.1f} %"
        if s.unmet:
            text += f"\n422: {s.unmet / s.requests * 100:.0f} %"
        ax.annotate(text, (x, 101), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [str(s.concurrency) for s in steps])
    ax.set_ylim(0, 118)
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("share of the answers (%)   [labels: mean top-1 served]")

    lat = ax.twinx()
    points = [(x, s.p99_ms) for x, s in zip(xs, steps, strict=True) if not math.isnan(s.p99_ms)]
    if points:
        lat.plot(*zip(*points, strict=True), "-o", color="crimson", ms=4, label="achieved p99")
    lat.axhline(budget_ms, color="crimson", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
    top = max([budget_ms, *(p for _, p in points)])
    lat.set_ylim(0, top * 1.25)
    lat.set_ylabel("end-to-end latency (ms)")

    handles, labels = ax.get_legend_handles_labels()
    more_h, more_l = lat.get_legend_handles_labels()
    ax.legend(
        handles + more_h,
        labels + more_l,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.08, 1.0),
    )
    ax.set_title(f"Routing under load: latency_budget_ms={budget_ms:g}\n{machine}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
