"""Whether a top-1 gap between two trained configurations is beyond test-set noise.

A gap counts as real when it is more than twice the standard error of the difference and, where
both sides have two or more seeds, more than the larger seed-to-seed range. Both sides are
measured on the same test images, so where their cards record which images each gets right
(``metrics.correct``) the standard error is the paired one, from the per-image differences
(McNemar's view: only the images on which the two disagree carry the gap's noise); where a card
lacks them, the unpaired binomial one, which overstates it (two WRN-16-1 students on CIFAR-10's
10,000 test images: 2 s.e. 0.6 points paired, 1.0 unpaired). The report's studies read every
comparison so, and the zoo decides from the same test whether a second seed is due.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.evaluate import unpack_hits
from service.contract.model_card import ModelCard


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


@dataclass(frozen=True)
class Runs:
    """One configuration trained with one or more seeds."""

    cards: tuple[ModelCard, ...]

    @property
    def top1(self) -> float:
        """Mean top-1 over the seeds."""
        return statistics.fmean(c.metrics.top1 for c in self.cards)

    @property
    def seeds(self) -> list[int]:
        """The seeds, in order."""
        return [c.training.seed for c in self.cards]

    @property
    def spread(self) -> float | None:
        """max - min top-1 over the seeds (None with one seed)."""
        if len(self.cards) < 2:
            return None
        values = [c.metrics.top1 for c in self.cards]
        return max(values) - min(values)

    @property
    def n(self) -> int:
        """Test images per evaluation."""
        return self.cards[0].metrics.n

    def per_seed(self) -> str:
        """Top-1 % of each seed, e.g. '90.12 (s0), 90.40 (s1)'."""
        return ", ".join(f"{c.metrics.top1 * 100:.2f} (s{c.training.seed})" for c in self.cards)


def group_runs(cards: Sequence[ModelCard]) -> Runs:
    """The seeds of one configuration, sorted by seed."""
    return Runs(tuple(sorted(cards, key=lambda c: (c.training.seed, c.name))))


@dataclass(frozen=True)
class Gap:
    """The top-1 gap from one configuration to another, in points, and its noise."""

    points: float
    two_se: float  # twice the standard error of the difference, in points
    seed_range: float | None  # the larger seed-to-seed range, with two or more seeds a side
    paired: bool = False  # the s.e. from per-image differences (else binomial, unpaired)

    @property
    def noise(self) -> str:
        """'2 s.e. = 0.62 (paired)' or '2 s.e. = 1.02 (unpaired)'."""
        return f"2 s.e. = {self.two_se:.2f} ({'paired' if self.paired else 'unpaired'})"

    @property
    def beyond_noise(self) -> bool:
        """More than 2 s.e. and, with seeds on both sides, more than the seed range."""
        return abs(self.points) > self.two_se and (
            self.seed_range is None or abs(self.points) > self.seed_range
        )


def _mean_hits(runs: Runs) -> np.ndarray:
    """Per image, the share of the seeds that get it right."""
    return np.mean([unpack_hits(str(c.metrics.correct), c.metrics.n) for c in runs.cards], axis=0)


def paired_standard_error(low: Runs, high: Runs) -> float | None:
    """Standard error of the top-1 gap from the per-image differences of the two sides (their
    seeds averaged per image); None unless every card records its hits on the same split."""
    metrics = [c.metrics for c in low.cards + high.cards]
    if (
        any(m.correct is None for m in metrics)
        or len({(m.dataset, m.split, m.n) for m in metrics}) != 1
    ):
        return None
    if metrics[0].n < 2:
        return None
    d = _mean_hits(high) - _mean_hits(low)
    return float(d.std(ddof=1) / math.sqrt(len(d)))


def gap(low: Runs, high: Runs) -> Gap:
    """From ``low`` to ``high``."""
    # Seeds share one test split: averaging them does not shrink the test set's sampling noise.
    paired = paired_standard_error(low, high)
    se = (
        math.hypot(standard_error(low.top1, low.n), standard_error(high.top1, high.n))
        if paired is None
        else paired
    )
    spreads = [s for s in (low.spread, high.spread) if s is not None]
    return Gap(
        points=(high.top1 - low.top1) * 100,
        two_se=2 * se * 100,
        seed_range=max(spreads) * 100 if len(spreads) == 2 else None,
        paired=paired is not None,
    )


def compare(low: Runs, high: Runs) -> str:
    """'+0.85 points (beyond noise; 2 s.e. = 0.62 (paired))' with the seeds taken into
    account; with one seed a side it says so ('beyond noise, one seed each': the test set's
    noise is measured, the seed-to-seed spread is not; a zoo trains a second seed of both where
    the gap is within noise and its config has one)."""
    g = gap(low, high)
    gain, seed_noise, beyond = g.points, g.seed_range, g.beyond_noise
    parts = [g.noise]
    if seed_noise is not None:
        parts.append(f"seed range {seed_noise:.2f}")
    verdict = "beyond noise" if beyond else "within noise"
    if len(low.cards) == 1 and len(high.cards) == 1:
        # The test set's noise only: how far another seed would move either side is unmeasured.
        verdict += ", one seed each"
    return f"{gain:+.2f} points ({verdict}; {', '.join(parts)})"
