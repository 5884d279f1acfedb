"""The CIFAR-10 zoo's targets: each verdict follows the cards' numbers, misses included."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.report import render_report
from export.targets import check_targets, render_targets
from service.contract.model_card import ModelCard, ProfileRow, read_manifest
from tests.support.cards import scored_card


def _card(
    base: ModelCard,
    name: str,
    top1: float,
    method: str,
    *,
    arch: str = "wrn-16-1",
    seed: int = 0,
    img_s: float = 3000.0,
    epochs: float = 30.0,
    dataset: str = "cifar10",
    teacher: str | None = "teacher",
) -> ModelCard:
    rows = tuple(
        ProfileRow(
            batch_size=bs, p50_ms=bs / img_s * 1000, p99_ms=bs / img_s * 1500, images_per_s=img_s
        )
        for bs in (1, 32)
    )
    return scored_card(
        base, name, top1, rows, dataset=dataset, method=method, architecture=arch, seed=seed,
        epochs=epochs, teacher=None if method == "baseline" else teacher,
    )  # fmt: skip


@pytest.fixture
def base(digits_repo: Path) -> ModelCard:
    return read_manifest(digits_repo / "digits-logreg")


def _verdicts(cards: list[ModelCard]) -> dict[str, tuple[str, str]]:
    teacher = next(c for c in cards if c.name == "teacher")
    return {v.target: (v.measured, v.verdict) for v in check_targets(cards, teacher)}


def test_every_target_met(base: ModelCard) -> None:
    cards = [
        _card(base, "teacher", 0.930, "baseline", arch="wrn-40-2", img_s=330.0, epochs=40),
        _card(base, "alone", 0.880, "baseline"),
        _card(base, "kd", 0.895, "kd"),
        _card(base, "rocket", 0.890, "rocket"),
        _card(base, "rocket-kd", 0.905, "rocket-kd", img_s=3300.0),
    ]
    v = _verdicts(cards)
    assert v["teacher top-1 ≥ 92%"] == ("93.00% (teacher, 40 epochs)", "met")
    assert v["best wrn-16-1 student top-1 ≥ 89%"] == ("90.50% (rocket-kd, 30 epochs)", "met")
    assert v["KD beats wrn-16-1 alone"][1] == "met"
    assert v["KD beats wrn-16-1 alone"][0].startswith("+1.50 points over alone (1 vs 1 seed(s)")
    assert v["Rocket beats wrn-16-1 alone"][1] == "met"  # +1.0 against 2 s.e. = 0.90
    assert v["Rocket+KD beats wrn-16-1 alone"][1] == "met"
    speed = next(m for t, m in v.items() if t.startswith("a student within 3 points"))
    assert speed == ("10.0x (rocket-kd, 3,300 against 330 img/s), 2.50 points below the teacher",
                     "met")  # fmt: skip


def test_misses_are_reported_with_their_size(base: ModelCard) -> None:
    cards = [
        _card(base, "teacher", 0.8956, "baseline", arch="wrn-40-2", img_s=330.0, epochs=40),
        _card(base, "alone", 0.850, "baseline"),
        _card(base, "alone-s1", 0.852, "baseline", seed=1),
        _card(base, "kd", 0.853, "kd"),
        _card(base, "kd-s1", 0.851, "kd", seed=1),
        _card(base, "rocket", 0.854, "rocket"),
        _card(base, "rocket-kd", 0.830, "rocket-kd"),
        _card(base, "rocket-kd-s1", 0.832, "rocket-kd", seed=1),
        _card(base, "mobilenet", 0.870, "baseline", arch="mobilenetv2-0.5", img_s=1650.0),
    ]
    v = _verdicts(cards)
    # A miss is stated beside the budget and what the published 200-epoch recipes reach.
    assert v["teacher top-1 ≥ 92%"] == (
        "89.56% (teacher, 40 epochs)",
        "missed by 2.44 points at 40 epochs; the published 200-epoch recipe reaches about 95% "
        "(Zagoruyko & Komodakis, 2016)",
    )
    assert v["best wrn-16-1 student top-1 ≥ 89%"] == (
        "85.40% (rocket, 30 epochs)",
        "missed by 3.60 points at 30 epochs; the published 200-epoch recipe reaches 91.23% alone "
        "(Zhou et al., 2018)",
    )
    assert v["KD beats wrn-16-1 alone"][1] == (
        "missed: two seeds a side find no gain beyond noise at this budget"
    )
    assert "(2 vs 2 seed(s)" in v["KD beats wrn-16-1 alone"][0]
    assert (
        v["Rocket beats wrn-16-1 alone"][1]
        == "open: within noise, with fewer than two seeds a side"
    )
    # two seeds a side, and worse beyond noise: said as worse, not as "no gain"
    assert "(2 vs 2 seed(s)" in v["Rocket+KD beats wrn-16-1 alone"][0]
    assert v["Rocket+KD beats wrn-16-1 alone"][1] == "missed: worse than alone beyond noise"
    # MobileNet is within 3 points (2.56) but only 5x: the target is missed with its ratio
    speed = next(m for t, m in v.items() if t.startswith("a student within 3 points"))
    assert speed[1] == "missed: 5.0x" and "mobilenet" in speed[0]


def test_no_student_close_enough_says_which_is_closest(base: ModelCard) -> None:
    cards = [
        _card(base, "teacher", 0.93, "baseline", arch="wrn-40-2", img_s=330.0, epochs=40),
        _card(base, "alone", 0.85, "baseline"),
        _card(base, "kd", 0.89, "kd"),
    ]
    speed = next(m for t, m in _verdicts(cards).items() if t.startswith("a student within"))
    assert speed == ("no student within 3 points; the closest, kd, is 4.00 points below", "missed")


def test_the_report_has_the_section_for_cifar10_only(base: ModelCard) -> None:
    cifar = [
        _card(base, "teacher", 0.93, "baseline", arch="wrn-40-2", img_s=330.0, epochs=40),
        _card(base, "kd", 0.90, "kd"),
    ]
    assert "## Targets" in render_report(cifar, "zoo")
    digits = [
        _card(base, "teacher", 0.93, "baseline", arch="resnet20", dataset="digits"),
        _card(base, "kd", 0.90, "kd", arch="resnet8", dataset="digits"),
    ]
    assert render_targets(digits, digits[0]) == []
    assert "## Targets" not in render_report(digits, "zoo")
