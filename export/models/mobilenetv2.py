"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: inverted residuals, width multiplier."""

from __future__ import annotations

import torch
from torch import nn

from export.models.base import PoolLinear, StagedNet, init_weights, stage_strides

# (expansion t, channels c, repeats n, stride s). The CIFAR variant keeps a stride-1 stem and
# a stride-1 second group, so 32x32 inputs end at 4x4 instead of 1x1.
CIFAR_SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Module:
    """Convolution, batch norm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu(in_ch, hidden, 1, 1))
        layers += [
            conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One inverted residual block."""
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(StagedNet):
    """MobileNetV2 with a width multiplier; stages are the four resolution groups."""

    def __init__(
        self, width_mult: float, *, in_channels: int, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width multiplier must be positive, got {width_mult}")
        stem_ch = make_divisible(32 * width_mult)
        self.stem = conv_bn_relu(in_channels, stem_ch, 3, 1)
        downsampling = [s for _, _, _, s in CIFAR_SETTINGS if s > 1]
        adapted = iter(stage_strides(image_size, downsampling))
        groups: list[list[nn.Module]] = [[]]
        in_ch = stem_ch
        for t, c, n, s in CIFAR_SETTINGS:
            out_ch = make_divisible(c * width_mult)
            stride = next(adapted) if s > 1 else 1
            if s > 1:
                groups.append([])  # a new stage starts at every (nominal) downsampling step
            for i in range(n):
                groups[-1].append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, t))
                in_ch = out_ch
        last = make_divisible(1280 * max(1.0, width_mult))
        groups[-1].append(conv_bn_relu(in_ch, last, 1, 1))
        self.stages = nn.ModuleList(nn.Sequential(*g) for g in groups)
        self.head = PoolLinear(last, num_classes, pre_activation=False)
        init_weights(self)
