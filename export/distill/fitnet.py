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
