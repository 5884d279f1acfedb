"""Model cards made from a real one with chosen scores, for the report's and targets' tests."""

from __future__ import annotations

from typing import Any

from service.contract.model_card import ModelCard, ProfileRow


def scored_card(
    base: ModelCard,
    name: str,
    top1: float,
    rows: tuple[ProfileRow, ...],
    *,
    dataset: str = "cifar10",
    ece: float | None = None,
    card: dict[str, Any] | None = None,
    **training: Any,
) -> ModelCard:
    """``base`` renamed, with top-1 on 10,000 test images of ``dataset``, this calibration error
    (none by default), these profile rows, the training fields given and any other card fields
    in ``card``."""
    return base.model_copy(
        update={
            "name": name,
            "training": base.training.model_copy(update=training),
            "metrics": base.metrics.model_copy(
                update={
                    "dataset": dataset,
                    "n": 10_000,
                    "top1": top1,
                    "ece": ece,
                    "nll": None,
                    "correct": None,
                }
            ),
            "profile": base.profile.model_copy(update={"rows": rows}),
            **(card or {}),
        }
    )
