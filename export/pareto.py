"""The accuracy/latency Pareto front, with models that do the same work counted as equally fast."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from service.contract.model_card import ModelCard


def latency_ms(card: ModelCard) -> float:
    """p50 latency of one image (batch 1), the x axis of the trade-off."""
    row = card.profile.row(1)
    return row.p50_ms if row else float("inf")


def same_work(card: ModelCard) -> tuple[str, str, int, int]:
    """What decides a model's speed: architecture, precision, MACs and parameters. Networks that
    share them run one graph with other weights (WRN-16-1 trained alone, with KD or Rocket), so
    their latencies differ by measurement noise alone."""
    return (card.training.architecture, card.precision, card.macs, card.params)


def class_latency_ms(cards: Sequence[ModelCard]) -> dict[str, float]:
    """Each model's batch-1 latency as the median over the models that do the same work."""
    groups: dict[tuple[str, str, int, int], list[ModelCard]] = {}
    for card in cards:
        groups.setdefault(same_work(card), []).append(card)
    return {
        c.name: statistics.median(latency_ms(m) for m in group)
        for group in groups.values()
        for c in group
    }


def pareto_front(cards: Sequence[ModelCard], speed: Mapping[str, float] | None = None) -> set[str]:
    """Names of the models no other model beats on both top-1 and batch-1 latency, noise aside.

    Models that do the same work (``same_work``) count as equally fast, at their median latency,
    so only the most accurate of them can be on the front: which of five identical WRN-16-1
    graphs measured fastest on a shared machine is chance, and the front must not follow it.
    ``speed`` is ``class_latency_ms(cards)`` when the caller has it already.
    """
    speed = class_latency_ms(cards) if speed is None else speed
    front: set[str] = set()
    best = -1.0
    for card in sorted(cards, key=lambda c: (speed[c.name], -c.metrics.top1, c.name)):
        if card.metrics.top1 > best:
            front.add(card.name)
            best = card.metrics.top1
    return front
