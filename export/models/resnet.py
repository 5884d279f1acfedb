"""ResNet for CIFAR (He et al. 2016): depth 6n+2, basic blocks, widths 16/32/64."""

from __future__ import annotations

import torch
from torch import nn

from export.models.base import (
    PoolLinear,
    StagedNet,
    init_weights,
    residual_stages,
    stage_strides,
)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus shortcut (1x1 conv + bn when the shape changes), then relu."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(StagedNet):
    """ResNet-(6n+2) for small images."""

    def __init__(
        self, depth: int, *, in_channels: int, num_classes: int, image_size: int, width: int = 16
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, 56, 110...), got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        strides = stage_strides(image_size, [1, 2, 2])
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.stages = residual_stages(BasicBlock, width, widths, strides, n)
        self.head = PoolLinear(widths[-1], num_classes, pre_activation=False)
        init_weights(self)
