"""The CIFAR-10 zoo's targets checked against its cards: each one met or missed, with the numbers.

The targets are the project's goals for the CIFAR-10 zoo (the Rocket Launching setting on a CPU
budget): a WRN-40-2 teacher at 92 % top-1; the best WRN-16-1 student at 89 %; KD, Rocket and
Rocket+KD each beating WRN-16-1 alone beyond test-set noise (or two seeds a side showing they do
not at this budget); and a student within 3 points of the teacher serving at least 8x its
throughput at batch 32 (the "8x cheaper online" claim). REPORT.md states each verdict; a miss is
reported with its size, never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from export.comparisons import (
    METHOD_TEXT,
    PAPER_ERROR,
    ablation_of,
    points_below,
    trained_networks,
)
from export.noise import gap, group_runs
from service.contract.model_card import ModelCard

TEACHER_TOP1 = 0.92
STUDENT_ARCH = "wrn-16-1"
STUDENT_TOP1 = 0.89
BEAT_ALONE = ("kd", "rocket", "rocket-kd")
SPEEDUP = 8.0
SPEEDUP_BATCH = 32
SPEEDUP_MAX_GAP = 0.03
# Where the two accuracy targets come from: recipes of 200 epochs, which a 2-core CPU cannot
# afford; a miss is stated beside the epochs the zoo gave the network and what those recipes reach.
PUBLISHED_EPOCHS = 200
TEACHER_PUBLISHED = "about 95% (Zagoruyko & Komodakis, 2016)"
STUDENT_PUBLISHED = f"{100 - PAPER_ERROR['baseline']:.2f}% alone (Zhou et al., 2018)"


@dataclass(frozen=True)
class Verdict:
    """One target: what it asks, what the cards show, and the verdict."""

    target: str
    measured: str
    verdict: str


def _b32(card: ModelCard) -> float | None:
    row = card.profile.row(SPEEDUP_BATCH)
    return row.images_per_s if row else None


def _missed(points: float) -> str:
    return f"missed by {points:.2f} points"


def _at_least(target: str, card: ModelCard, floor: float, published: str) -> Verdict:
    top1, epochs = card.metrics.top1, card.training.epochs
    verdict = (
        "met"
        if top1 >= floor
        else f"{_missed((floor - top1) * 100)} at {epochs:g} epochs; the published "
        f"{PUBLISHED_EPOCHS}-epoch recipe reaches {published}"
    )
    return Verdict(target, f"{top1:.2%} ({card.name}, {epochs:g} epochs)", verdict)


def check_targets(cards: Sequence[ModelCard], teacher: ModelCard) -> list[Verdict]:
    """Every target's verdict from the cards of a zoo (served or not) and its teacher."""
    verdicts = [
        _at_least(
            f"teacher top-1 ≥ {TEACHER_TOP1:.0%}",
            teacher,
            TEACHER_TOP1,
            TEACHER_PUBLISHED,
        )
    ]
    students = [
        c for c in cards if c.training.architecture == STUDENT_ARCH and c.name != teacher.name
    ]
    if students:
        best = max(students, key=lambda c: (c.metrics.top1, c.name))
        target = f"best {STUDENT_ARCH} student top-1 ≥ {STUDENT_TOP1:.0%}"
        verdicts.append(_at_least(target, best, STUDENT_TOP1, STUDENT_PUBLISHED))
    verdicts += _beat_alone(cards)
    speed = _speedup(cards, teacher)
    if speed is not None:
        verdicts.append(speed)
    return verdicts


def _beat_alone(cards: Sequence[ModelCard]) -> list[Verdict]:
    pool = [
        c for c in trained_networks(cards)
        if c.training.architecture == STUDENT_ARCH and ablation_of(c) is None
    ]  # fmt: skip
    alone = [c for c in pool if c.training.method == "baseline"]
    if not alone:
        return []
    budget = max(c.training.epochs for c in alone)
    base = group_runs([c for c in alone if c.training.epochs == budget])
    verdicts = []
    for method in BEAT_ALONE:
        group = [c for c in pool if c.training.method == method and c.training.epochs == budget]
        if not group:
            continue
        runs = group_runs(group)
        g = gap(base, runs)
        measured = (
            f"{g.points:+.2f} points over alone ({len(runs.cards)} vs {len(base.cards)} "
            f"seed(s), {g.noise}"
            + (f", seed range {g.seed_range:.2f}" if g.seed_range is not None else "")
            + f", {budget:g} epochs)"
        )
        if g.beyond_noise and g.points > 0:
            verdict = "met"
        elif g.beyond_noise:
            verdict = "missed: worse than alone beyond noise"
        elif len(runs.cards) >= 2 and len(base.cards) >= 2:
            verdict = "missed: two seeds a side find no gain beyond noise at this budget"
        else:
            verdict = "open: within noise, with fewer than two seeds a side"
        verdicts.append(Verdict(f"{METHOD_TEXT[method]} beats {STUDENT_ARCH} alone", measured,
                                verdict))  # fmt: skip
    return verdicts


def _speedup(cards: Sequence[ModelCard], teacher: ModelCard) -> Verdict | None:
    reference = _b32(teacher)
    if reference is None:
        return None
    students = [
        c for c in cards
        if c.name != teacher.name and c.derived_from != teacher.name and _b32(c) is not None
    ]  # fmt: skip
    if not students:
        return None
    target = (
        f"a student within {SPEEDUP_MAX_GAP * 100:.0f} points of the teacher at ≥ {SPEEDUP:g}x "
        f"its img/s at batch {SPEEDUP_BATCH}"
    )
    close = [c for c in students if teacher.metrics.top1 - c.metrics.top1 <= SPEEDUP_MAX_GAP]
    if not close:
        nearest = max(students, key=lambda c: (c.metrics.top1, c.name))
        gap_points = (teacher.metrics.top1 - nearest.metrics.top1) * 100
        return Verdict(
            target,
            f"no student within {SPEEDUP_MAX_GAP * 100:.0f} points; the closest, "
            f"{nearest.name}, is {points_below(gap_points)}",
            "missed",
        )
    fastest = max(close, key=lambda c: (_b32(c) or 0.0, c.name))
    ratio = (_b32(fastest) or 0.0) / reference
    gap_points = (teacher.metrics.top1 - fastest.metrics.top1) * 100
    return Verdict(
        target,
        f"{ratio:.1f}x ({fastest.name}, {_b32(fastest):,.0f} against {reference:,.0f} img/s), "
        f"{points_below(gap_points)} the teacher",
        "met" if ratio >= SPEEDUP else f"missed: {ratio:.1f}x",
    )


def render_targets(cards: Sequence[ModelCard], teacher: ModelCard | None) -> list[str]:
    """The Targets section of a CIFAR-10 zoo's REPORT.md (nothing for other zoos)."""
    if teacher is None or teacher.metrics.dataset != "cifar10":
        return []
    lines = [
        "## Targets",
        "",
        "The CIFAR-10 zoo's goals, checked against the cards above (export/targets.py). Noise: a "
        "gap counts when it exceeds twice the standard error of the difference (paired, from the "
        "per-image hits the cards record; binomial where a card lacks them) and, with two seeds "
        "a side, the seed-to-seed range. The speed target is a ratio of throughputs measured on "
        "the report's machine: on another CPU fp32 and int8 do not speed up alike, and the ratio "
        "moves.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {v.target} | {v.measured} | {v.verdict} |" for v in check_targets(cards, teacher)]
    return [*lines, ""]
