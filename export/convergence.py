"""Learning curves of a zoo's trained networks: REPORT.md's convergence section and curves.png."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from export.comparisons import METHOD_TEXT, ablation_of, trained_networks
from export.devices import device_spans
from export.noise import gap, group_runs
from service.contract.model_card import EpochRecord, ModelCard

CURVES_FILENAME = "curves.png"


def curve(card: ModelCard) -> list[EpochRecord]:
    """The epochs that train the whole network, in order: FitNets' hint stage trains no
    classifier (its test top-1 is chance), so its curve starts after that stage."""
    return [r for r in card.training.history if r.stage is None]


def with_curves(cards: Sequence[ModelCard]) -> list[ModelCard]:
    """The trained networks (fp32, not a variant) whose cards carry a learning curve, by name."""
    return sorted((c for c in trained_networks(cards) if curve(c)), key=lambda c: c.name)


def span_union_s(spans: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) spans: time during which any of them ran."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def tail_epochs(n: int) -> int:
    """How many final epochs the tail spans: a quarter of the run, at least one."""
    return max(1, n // 4)


def render_convergence(cards: Sequence[ModelCard]) -> list[str]:
    """Per network: the last epoch's test top-1, the best epoch, the change over the last
    quarter of the run and the fit; then what a longer budget returned, where a zoo trained
    one configuration at two budgets."""
    nets = with_curves(cards)
    if not nets:
        return []
    lines = [
        "## Convergence",
        "",
        "Each network's test top-1 after every epoch, as its trainer measured it in PyTorch "
        "(the card's `training.history`). The curve chooses nothing: the network of the last "
        "epoch is the one exported and measured above. Tail = the change of test top-1 over "
        "the last quarter of the epochs; a one-cycle or cosine schedule anneals the learning "
        "rate to about zero there, so a small tail says the schedule has settled, not that a "
        "longer one would gain nothing (the budget comparison below measures that where the "
        "zoo has it).",
        "",
        f"![learning curves]({CURVES_FILENAME})",
        "",
        "| model | method | epochs | top-1 % at the last epoch | best epoch: top-1 % "
        "| tail (points) | train acc % at the last epoch |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for card in nets:
        records = curve(card)
        last, best = records[-1], max(records, key=lambda r: (r.test_top1, -r.epoch))
        k = tail_epochs(len(records))
        tail = (
            "-"
            if len(records) <= k
            else f"{(last.test_top1 - records[-1 - k].test_top1) * 100:+.2f} over {k}"
        )
        lines.append(
            f"| {card.name} | {card.training.method} | {card.training.epochs:g} "
            f"| {last.test_top1 * 100:.2f} | {best.epoch}: {best.test_top1 * 100:.2f} "
            f"| {tail} | {last.train_acc * 100:.2f} |"
        )
    lines += ["", *_budget_reading(cards)]
    return lines


def _budget_reading(cards: Sequence[ModelCard]) -> list[str]:
    """For each configuration (method, architecture; Rocket as published) trained at two or
    more budgets, the top-1 gained by the longer one, with its noise."""
    groups: dict[tuple[str, str], dict[float, list[ModelCard]]] = {}
    for c in trained_networks(cards):
        if ablation_of(c) is None:
            key = (c.training.method, c.training.architecture)
            groups.setdefault(key, {}).setdefault(c.training.epochs, []).append(c)
    lines = []
    for (method, arch), budgets in sorted(groups.items()):
        epochs = sorted(budgets)
        for short, long in itertools.pairwise(epochs):
            low, high = group_runs(budgets[short]), group_runs(budgets[long])
            g = gap(low, high)
            seeds = f"{len(low.cards)} vs {len(high.cards)} seed(s)"
            noise = g.noise + ("" if g.seed_range is None else f", seed range {g.seed_range:.2f}")
            lines.append(
                f"- {arch} {METHOD_TEXT.get(method, method)}, {short:g} -> {long:g} epochs: "
                f"{g.points:+.2f} points ({'beyond' if g.beyond_noise else 'within'} noise; "
                f"{seeds}; {noise})."
            )
    if not lines:
        return []
    return ["What a longer budget returned (top-1 of the exported files):", "", *lines, ""]


def plot_curves(cards: Sequence[ModelCard], path: Path, title: str) -> Path | None:
    """Test top-1 and training accuracy against the epoch, one line per network; None (and no
    file) when no card carries a learning curve."""
    nets = with_curves(cards)
    if not nets:
        path.unlink(missing_ok=True)  # a report rewritten from older cards has no curves
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (test_ax, train_ax) = plt.subplots(1, 2, figsize=(12, 6.5), dpi=110, sharey=True)
    colors = plt.get_cmap("tab20")
    for i, card in enumerate(nets):
        records = curve(card)
        epochs = [r.epoch for r in records]
        # tab20 has 20 colours: past them, the same colours dashed
        style = {"color": colors(i % 20), "linestyle": "-" if i < 20 else "--",
                 "linewidth": 1.1, "label": card.name}  # fmt: skip
        test_ax.plot(epochs, [r.test_top1 * 100 for r in records], **style)
        train_ax.plot(epochs, [r.train_acc * 100 for r in records], **style)
    test_ax.set_ylabel("top-1 accuracy (%)")
    test_ax.set_title("test split, after each epoch", fontsize=9)
    train_ax.set_title("training batches (augmented), during each epoch", fontsize=9)
    for ax in (test_ax, train_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    devices = "; ".join(
        sorted({d for c in nets for d, _ in device_spans(c.training.device or "n/a")})
    )
    fig.suptitle(f"{title}: learning curves (PyTorch)\ntrained on {devices}", fontsize=9)
    fig.legend(
        *test_ax.get_legend_handles_labels(),
        loc="lower center",
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    rows = (len(nets) + 2) // 3
    fig.tight_layout(rect=(0, min(0.45, 0.025 * rows + 0.01), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
