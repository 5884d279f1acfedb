"""The committed zoo (models/) by role, read from its cards, so that tests outlive a new zoo."""

from __future__ import annotations

from pathlib import Path

from export import report
from export.report import find_teacher
from service.contract.model_card import ModelCard, model_dirs, read_manifest
from tests.support.cli import ROOT

MODELS = ROOT / "models"


def zoo_cards(repo: Path = MODELS) -> list[ModelCard]:
    """Every card of the repository, by name."""
    return sorted((read_manifest(d) for d in model_dirs(repo)), key=lambda c: c.name)


def teacher(repo: Path = MODELS) -> ModelCard:
    """The teacher the students were distilled from (fp32)."""
    found = find_teacher(zoo_cards(repo))
    assert found is not None, "the zoo has a teacher"
    return found


def smallest_student(repo: Path = MODELS, precision: str = "int8") -> ModelCard:
    """The student with the fewest MACs in ``precision`` (of equal MACs, the most accurate)."""
    found = report.smallest_student(zoo_cards(repo), precision)
    assert found is not None, f"the zoo has a {precision} student"
    return found


def batch1_p99_ms(card: ModelCard) -> float:
    """The batch-1 p99 its card measured."""
    row = card.profile.row(1)
    assert row is not None, f"{card.name} has a batch-1 timing"
    return row.p99_ms
