"""Whether a gap is beyond test-set noise: paired or binomial standard error, and the seed range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export.evaluate import pack_hits
from export.noise import Runs, compare, gap, group_runs, standard_error
from service.contract.model_card import EvalMetrics, ModelCard, ProfileRow, read_manifest
from tests.support.cards import scored_card

ROWS = (ProfileRow(batch_size=1, p50_ms=1.0, p99_ms=1.5, images_per_s=1000.0),)


@pytest.fixture
def base(digits_repo: Path) -> ModelCard:
    return read_manifest(digits_repo / "digits-logreg")


def _runs(base: ModelCard, name: str, *top1_by_seed: float) -> Runs:
    cards = [
        scored_card(base, f"{name}-s{seed}", top1, ROWS, seed=seed)
        for seed, top1 in reversed(list(enumerate(top1_by_seed)))
    ]
    return group_runs(cards)


def test_the_standard_error_is_binomial() -> None:
    assert standard_error(0.9, 10_000) == pytest.approx(0.003)
    assert standard_error(1.0, 100) > 0  # a perfect score still has a noise floor


def test_runs_are_ordered_by_seed_with_their_mean_and_range(base: ModelCard) -> None:
    runs = _runs(base, "a", 0.880, 0.884)
    assert runs.seeds == [0, 1]
    assert runs.top1 == pytest.approx(0.882)
    assert runs.spread == pytest.approx(0.004)
    assert runs.per_seed() == "88.00 (s0), 88.40 (s1)"
    assert _runs(base, "b", 0.9).spread is None


def test_a_gap_beyond_twice_the_standard_error_is_real(base: ModelCard) -> None:
    g = gap(_runs(base, "low", 0.880), _runs(base, "high", 0.900))
    assert g.points == pytest.approx(2.0)
    assert g.two_se == pytest.approx(0.885, abs=0.001)  # hypot of 0.325 and 0.300 points, twice
    assert g.seed_range is None and g.beyond_noise
    assert not gap(_runs(base, "low", 0.895), _runs(base, "high", 0.900)).beyond_noise


def test_with_seeds_on_both_sides_the_gap_must_also_pass_the_seed_range(base: ModelCard) -> None:
    low, high = _runs(base, "low", 0.840, 0.880), _runs(base, "high", 0.885, 0.895)
    g = gap(low, high)
    assert g.points == pytest.approx(3.0) and g.points > g.two_se
    assert g.seed_range == pytest.approx(4.0)
    assert not g.beyond_noise
    assert gap(low, _runs(base, "top", 0.920, 0.930)).beyond_noise  # 6.5 points > 4.0
    # Seeds on one side only: the range of one side says nothing about the other's noise.
    assert gap(low, _runs(base, "one", 0.890)).seed_range is None


def test_compare_says_how_many_seeds_and_which_noise(base: ModelCard) -> None:
    one_each = compare(_runs(base, "a", 0.900), _runs(base, "b", 0.905))
    assert one_each == "+0.50 points (within noise, one seed each; 2 s.e. = 0.84 (unpaired))"
    two_each = compare(_runs(base, "a", 0.880, 0.884), _runs(base, "b", 0.886, 0.888))
    assert two_each == "+0.50 points (within noise; 2 s.e. = 0.90 (unpaired), seed range 0.40)"
    assert compare(_runs(base, "a", 0.900), _runs(base, "b", 0.880)).startswith(
        "-2.00 points (beyond noise, one seed each; 2 s.e. = 0.88"
    )


def _with_hits(base: ModelCard, name: str, hits: np.ndarray, seed: int = 0) -> ModelCard:
    card = scored_card(base, name, float(hits.mean()), ROWS, seed=seed)
    fields = {**card.metrics.model_dump(), "n": len(hits), "correct": pack_hits(hits)}
    return card.model_copy(update={"metrics": EvalMetrics.model_validate(fields)})


def test_a_gap_between_cards_with_their_hits_is_tested_paired(base: ModelCard) -> None:
    # 10,000 images; both right on 8,500, both wrong on 1,300; A alone right on 70, B on 130:
    # B is 0.60 points ahead and the two differ on 200 images.
    a = np.zeros(10_000, dtype=bool)
    b = np.zeros(10_000, dtype=bool)
    a[:8_500] = b[:8_500] = True
    a[8_500:8_570] = True
    b[8_570:8_700] = True
    g = gap(group_runs([_with_hits(base, "a", a)]), group_runs([_with_hits(base, "b", b)]))
    assert g.paired and g.points == pytest.approx(0.6)
    # by hand: d is +1 on 130 images, -1 on 70, 0 elsewhere
    d = np.r_[np.ones(130), -np.ones(70), np.zeros(9_800)]
    assert g.two_se == pytest.approx(2 * 100 * d.std(ddof=1) / math.sqrt(10_000), rel=1e-9)
    assert g.two_se == pytest.approx(0.283, abs=0.001) and g.beyond_noise
    # unpaired, the same gap would read as noise: 2 s.e. of 0.98 points
    unpaired = math.hypot(standard_error(0.857, 10_000), standard_error(0.863, 10_000))
    assert 2 * 100 * unpaired == pytest.approx(0.98, abs=0.01)
    assert 2 * 100 * unpaired > g.points
    assert "2 s.e. = 0.28 (paired)" in compare(
        group_runs([_with_hits(base, "a", a)]), group_runs([_with_hits(base, "b", b)])
    )


def test_seeds_are_averaged_per_image_and_a_card_without_hits_falls_back(base: ModelCard) -> None:
    rng = np.random.default_rng(0)
    a0, a1, b0 = (rng.random(10_000) < p for p in (0.85, 0.85, 0.86))
    low = group_runs([_with_hits(base, "a0", a0), _with_hits(base, "a1", a1, seed=1)])
    high = group_runs([_with_hits(base, "b0", b0)])
    d = b0.astype(float) - (a0.astype(float) + a1.astype(float)) / 2
    assert gap(low, high).two_se == pytest.approx(2 * 100 * d.std(ddof=1) / math.sqrt(10_000))
    plain = scored_card(base, "b-plain", float(b0.mean()), ROWS)  # a card from before 'correct'
    assert not gap(low, group_runs([plain])).paired
