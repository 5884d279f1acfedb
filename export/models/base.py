"""The shape every architecture shares: stem -> stages -> head, with features on request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class StagedNet(nn.Module):
    """A classifier built as ``stem``, a list of ``stages`` (each an nn.Sequential of blocks) and a
    ``head`` (pooling + classifier). Rocket sharing and hint losses rely on this structure."""

    stem: nn.Module
    stages: nn.ModuleList
    head: nn.Module

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Any:
        """Logits, or ``(logits, [output of every stage])`` when ``return_features``."""
        h = self.stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            h = stage(h)
            features.append(h)
        logits = self.head(h)
        # The TorchScript ONNX exporter passes unset defaults as tensors; only a real True counts,
        # so an exported graph is always plain logits (and no tracer warning is raised).
        if isinstance(return_features, bool) and return_features:
            return logits, features
        return logits

    def stage_channels(self) -> list[int]:
        """Output channels of every stage."""
        return [_out_channels(stage) for stage in self.stages]


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("stage without convolutions")
    return int(convs[-1].out_channels)


def stage_strides(image_size: int, wanted: list[int]) -> list[int]:
    """Drop downsampling steps (from the last) so the final feature map stays at least 2x2.

    An 8x8 digit through three stride-2 stages would be reduced to 1x1 and lose spatial
    structure; 32x32 CIFAR images keep the published strides.
    """
    strides = list(wanted)
    size = image_size
    for s in strides:
        size = max(1, size // s)
    i = len(strides) - 1
    while size < 2 and i >= 0:
        if strides[i] > 1:
            strides[i] = 1
            size *= 2
        i -= 1
    return strides


def residual_stages(
    block: Callable[[int, int, int], nn.Module],
    in_ch: int,
    widths: list[int],
    strides: list[int],
    blocks_per_stage: int,
) -> nn.ModuleList:
    """Stages of ``blocks_per_stage`` blocks; the first block of each changes width and stride."""
    stages = []
    for out_ch, stride in zip(widths, strides, strict=True):
        blocks = [block(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
                  for i in range(blocks_per_stage)]  # fmt: skip
        stages.append(nn.Sequential(*blocks))
        in_ch = out_ch
    return nn.ModuleList(stages)


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions, unit batch norms, small classifier: the CIFAR ResNet recipe."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PoolLinear(nn.Module):
    """Optional BN-ReLU, global average pooling and a linear classifier."""

    def __init__(self, channels: int, num_classes: int, pre_activation: bool) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm2d(channels) if pre_activation else nn.Identity()
        self.relu: nn.Module = nn.ReLU(inplace=True) if pre_activation else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled logits."""
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
