"""Whether a gap is beyond test-set noise: the binomial standard error and the seed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.noise import Runs, compare, gap, group_runs, standard_error
from service.contract.model_card import ModelCard, ProfileRow, read_manifest
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


def test_compare_says_when_a_second_seed_is_due(base: ModelCard) -> None:
    one_each = compare(_runs(base, "a", 0.900), _runs(base, "b", 0.905))
    assert one_each == (
        "+0.50 points (within noise, one seed each: a second seed of both is due; 2 s.e. = 0.84)"
    )
    two_each = compare(_runs(base, "a", 0.880, 0.884), _runs(base, "b", 0.886, 0.888))
    assert two_each == "+0.50 points (within noise; 2 s.e. = 0.90, seed range 0.40)"
    assert compare(_runs(base, "a", 0.900), _runs(base, "b", 0.880)).startswith(
        "-2.00 points (beyond noise; 2 s.e. = 0.88"
    )
