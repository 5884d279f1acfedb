"""SNN-MIMIC (Ba & Caruana 2014): L2 regression of student logits on teacher logits."""

from __future__ import annotations

import torch


def mimic_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """mean over the batch of 1/2 * ||student_logits - teacher_logits||^2 (teacher fixed)."""
    diff = student_logits - teacher_logits.detach()
    return 0.5 * diff.pow(2).sum(dim=1).mean()
