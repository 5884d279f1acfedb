"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016): pre-activation blocks, widths 16k/32k/64k."""

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


class WideBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv plus shortcut (1x1 conv on the activated input when needed)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.equal = in_ch == out_ch and stride == 1
        self.shortcut: nn.Module = (
            nn.Identity() if self.equal else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One pre-activation residual block."""
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.shortcut(act))


class WideResNet(StagedNet):
    """WRN-d-k for small images; depth 6n+4."""

    def __init__(
        self, depth: int, widen: int, *, in_channels: int, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 28, 40...), got {depth}")
        if widen < 1:
            raise ValueError(f"WRN widening factor must be >= 1, got {widen}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        strides = stage_strides(image_size, [1, 2, 2])
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stages = residual_stages(WideBlock, 16, widths, strides, n)
        self.head = PoolLinear(widths[-1], num_classes, pre_activation=True)
        init_weights(self)
