"""Rocket Launching's loss: CE(y, light) + CE(y, booster) + lambda * ||l_light - z_booster||^2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def logit_hint(
    light_logits: torch.Tensor, booster_logits: torch.Tensor, gradient_block: bool
) -> torch.Tensor:
    """Batch mean of ||l_light - z_booster||^2 on pre-softmax logits.

    With the gradient block the booster logits are a constant target: the hint term never
    updates the booster's own parameters, it only pulls the light net (and the layers it
    shares with the booster) toward the booster.
    """
    target = booster_logits.detach() if gradient_block else booster_logits
    return (light_logits - target).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class RocketTerms:
    """The loss and its parts (kept for logging)."""

    total: torch.Tensor
    ce_light: torch.Tensor
    ce_booster: torch.Tensor
    hint: torch.Tensor


class RocketLoss(nn.Module):
    """The joint objective of booster and light net."""

    def __init__(
        self, lam: float = 0.03, gradient_block: bool = True, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        self.lam = lam
        self.gradient_block = gradient_block
        self.label_smoothing = label_smoothing

    def forward(
        self,
        light_logits: torch.Tensor,
        booster_logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        train_booster: bool = True,
    ) -> RocketTerms:
        """All terms; ``train_booster=False`` drops the booster's CE (booster trained before)."""
        ce_light = F.cross_entropy(light_logits, targets, label_smoothing=self.label_smoothing)
        ce_booster = F.cross_entropy(booster_logits, targets, label_smoothing=self.label_smoothing)
        hint = logit_hint(light_logits, booster_logits, self.gradient_block)
        total = ce_light + self.lam * hint
        if train_booster:
            total = total + ce_booster
        return RocketTerms(total=total, ce_light=ce_light, ce_booster=ce_booster, hint=hint)
