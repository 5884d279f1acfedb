"""REPORT.md's convergence section and curves.png, from the learning curves cards carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from export.convergence import plot_curves, render_convergence, tail_epochs
from export.report import render_report, write_report
from service.contract.model_card import EpochRecord, ModelCard, ProfileRow, read_manifest
from tests.support.cards import scored_card

ROWS = tuple(
    ProfileRow(batch_size=bs, p50_ms=float(bs), p99_ms=1.5 * bs, images_per_s=1000.0)
    for bs in (1, 8, 32)
)


def _history(test: list[float], *, hint: int = 0) -> tuple[EpochRecord, ...]:
    """One record per value of ``test``; the first ``hint`` epochs are FitNets' hint stage."""
    return tuple(
        EpochRecord(
            epoch=i + 1,
            stage="hint" if i < hint else None,
            loss=2.0 / (i + 1),
            train_acc=min(1.0, top1 + 0.05),
            test_top1=top1,
            lr=0.1,
            img_per_s=100.0,
            epoch_time_s=60.0,
        )
        for i, top1 in enumerate(test)
    )


def _card(base: ModelCard, name: str, top1: float, method: str, **training: Any) -> ModelCard:
    fields = {"method": method, "architecture": "wrn-16-1", "epochs": 8.0, "seed": 0, **training}
    return scored_card(base, name, top1, ROWS, **fields)


@pytest.fixture
def base(digits_repo: Path) -> ModelCard:
    return read_manifest(digits_repo / "digits-logreg")


def test_each_trained_network_gets_a_row_from_its_curve(base: ModelCard) -> None:
    curve = [0.30, 0.50, 0.62, 0.58, 0.70, 0.74, 0.80, 0.79]
    cards = [
        _card(base, "alone", 0.79, "baseline", history=_history(curve)),
        # FitNets' hint stage (chance on the test split) is left out of its curve.
        _card(base, "fitnet", 0.81, "fitnet", history=_history([0.1, 0.1, *curve[2:]], hint=2)),
        # A variant, and a card written before curves were kept, have no row.
        _card(base, "alone-int8", 0.79, "baseline").model_copy(
            update={"precision": "int8", "derived_from": "alone"}
        ),
        _card(base, "old", 0.75, "kd"),
    ]
    lines = render_convergence(cards)
    assert lines[0] == "## Convergence"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    # last 79.00; best epoch 7 (80.00); tail over 8 // 4 = 2 epochs: 79.00 - 74.00
    assert rows[0] == "| alone | baseline | 8 | 79.00 | 7: 80.00 | +5.00 over 2 | 84.00 |"
    # six epochs after the hint stage: the tail spans one (79.00 - 80.00), epochs keep their number
    assert rows[1] == "| fitnet | fitnet | 8 | 79.00 | 7: 80.00 | -1.00 over 1 | 84.00 |"
    assert len(rows) == 2


def test_tail_spans_a_quarter_of_the_epochs() -> None:
    assert [tail_epochs(n) for n in (1, 3, 4, 8, 30, 40)] == [1, 1, 1, 2, 7, 10]
    assert render_convergence([]) == []


def test_a_longer_budget_is_read_against_noise(base: ModelCard) -> None:
    rocket = {"booster": "wrn-40-1", "sharing": "interval"}
    history = _history([0.5, 0.8])
    cards = [
        _card(base, "rocket-15", 0.860, "rocket", epochs=15.0, config=rocket, history=history),
        _card(base, "rocket-30", 0.900, "rocket", epochs=30.0, config=rocket, history=history),
        _card(base, "alone-15", 0.880, "baseline", epochs=15.0, history=history),
        _card(base, "alone-30", 0.884, "baseline", epochs=30.0, history=history),
        # An ablation is not Rocket at another budget.
        _card(base, "nogb-15", 0.70, "rocket", epochs=15.0,
              config={**rocket, "gradient_block": False}, history=history),
    ]  # fmt: skip
    text = "\n".join(render_convergence(cards))
    assert "- wrn-16-1 Rocket, 15 -> 30 epochs: +4.00 points (beyond noise; 1 vs 1 seed(s);" in text
    assert "- wrn-16-1 alone, 15 -> 30 epochs: +0.40 points (within noise; 1 vs 1 seed(s);" in text
    assert text.count("epochs: ") == 2


def test_the_report_links_the_curves_it_writes(base: ModelCard, tmp_path: Path) -> None:
    cards = [
        _card(base, "a", 0.8, "baseline", history=_history([0.5, 0.7, 0.8])),
        _card(base, "b", 0.7, "kd", history=_history([0.4, 0.6, 0.7])),
    ]
    write_report(tmp_path, cards, "zoo")
    assert "![learning curves](curves.png)" in (tmp_path / "REPORT.md").read_text()
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 1000
    # Rewritten from cards without curves: no section, and no stale picture left behind.
    plain = [c.model_copy(update={"training": c.training.model_copy(update={"history": ()})})
             for c in cards]  # fmt: skip
    assert "## Convergence" not in render_report(plain, "zoo")
    write_report(tmp_path, plain, "zoo")
    assert not (tmp_path / "curves.png").exists()
    assert plot_curves(plain, tmp_path / "curves.png", "zoo") is None
