"""FitNets (Romero et al. 2015): regress a student layer onto a teacher's hint layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HintRegressor(nn.Module):
    """1x1 conv + BN mapping student channels to teacher channels, pooling to the teacher's size."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, student_feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The student's feature in the teacher's space."""
        x = student_feature
        if tuple(x.shape[-2:]) != size:
            x = F.adaptive_avg_pool2d(x, size)
        return self.bn(self.conv(x))


def hint_loss(regressed: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the regressed student feature and the (fixed) teacher hint."""
    return F.mse_loss(regressed, teacher_feature.detach())


def hint_layers(
    student_stages: int,
    teacher_stages: int,
    hint_layer: int | None = None,
    teacher_hint_layer: int | None = None,
) -> tuple[int, int]:
    """(student guided stage, teacher hint stage): the middle student stage by default, and the
    teacher stage at the same relative depth; a negative teacher index also means the default."""
    guided = student_stages // 2 if hint_layer is None else hint_layer
    if not 0 <= guided < student_stages:
        raise ValueError(f"hint_layer must be in 0..{student_stages - 1}, got {guided}")
    if teacher_hint_layer is None or teacher_hint_layer < 0:
        teacher_hint_layer = round(guided * (teacher_stages - 1) / max(1, student_stages - 1))
    if not 0 <= teacher_hint_layer < teacher_stages:
        raise ValueError(f"teacher_hint_layer must be in 0..{teacher_stages - 1}")
    return guided, teacher_hint_layer
