"""Hinton knowledge distillation: KL(teacher/T || student/T) * T^2, mixed with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL divergence between softened distributions, batch-mean, scaled by T^2 (Hinton et al.)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class KDLoss(nn.Module):
    """alpha * KD(T) + (1 - alpha) * CE(y, student)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, label_smoothing: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = temperature
        self.alpha = alpha
        self.label_smoothing = label_smoothing

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The combined loss."""
        soft = kd_loss(student_logits, teacher_logits, self.temperature)
        hard = F.cross_entropy(student_logits, targets, label_smoothing=self.label_smoothing)
        return self.alpha * soft + (1.0 - self.alpha) * hard
