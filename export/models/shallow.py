"""Shallow, wide CNN (Ba & Caruana 2014, SNN-MIMIC): 1-2 wide convolutions, a wide hidden layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from export.models.base import StagedNet, init_weights, stage_strides

KERNELS = (5, 3)  # a 5x5 first convolution as in the paper's SNN-CNN, a 3x3 second one
HEAD_GRID = 4  # the last feature map is average-pooled to at most 4x4 before the flatten
BOTTLENECK = 2  # linear bottleneck units per filter
HIDDEN = 8  # hidden ReLU units per filter
# The hidden batch norm's scale starts at sqrt(READOUT_UNITS / hidden units), so the classifier
# first sees a feature vector of the norm of a READOUT_UNITS-wide one. At full scale the wide
# layer makes one SGD step at lr 0.1 overshoot the L2 logit regression of mimic many times over
# and training diverges (measured on digits); cross-entropy is bounded and trains either way.
READOUT_UNITS = 16


class ConvPool(nn.Module):
    """conv (stride 1 or 2)-bn-relu, then max pooling by ``pool`` (none at 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool: nn.Module = nn.MaxPool2d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One wide convolution layer."""
        return self.pool(self.relu(self.bn(self.conv(x))))


class MimicHead(nn.Module):
    """Average pooling to a small grid, flatten, linear bottleneck, wide ReLU layer, classifier.

    The bottleneck (no non-linearity) factorises the large flatten-to-hidden matrix, which Ba &
    Caruana used to make their wide shallow nets train faster.
    """

    def __init__(self, channels: int, size: int, num_classes: int, width: int) -> None:
        super().__init__()
        kernel = max(1, size // HEAD_GRID)
        self.pool: nn.Module = nn.AvgPool2d(kernel) if kernel > 1 else nn.Identity()
        pooled = size // kernel
        self.bottleneck = nn.Linear(channels * pooled * pooled, BOTTLENECK * width, bias=False)
        self.hidden = nn.Linear(BOTTLENECK * width, HIDDEN * width, bias=False)
        self.bn = nn.BatchNorm1d(HIDDEN * width)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(HIDDEN * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        h = self.bottleneck(torch.flatten(self.pool(x), 1))
        return self.fc(self.relu(self.bn(self.hidden(h))))


class ShallowNet(StagedNet):
    """shallow-c-w: ``convs`` (1 or 2) convolution stages of ``width`` filters, then MimicHead.

    The first convolution is 5x5 with stride 2; one stage then max-pools by 2, two stages put a
    3x3 convolution and the pooling after it. A 32x32 image ends at 8x8, an 8x8 digit at 2x2.
    """

    def __init__(
        self, convs: int, width: int, *, in_channels: int, num_classes: int, image_size: int
    ) -> None:
        super().__init__()
        if convs not in (1, 2):
            raise ValueError(f"shallow nets have 1 or 2 convolution layers, got {convs}")
        if width < 1:
            raise ValueError(f"shallow net width must be >= 1, got {width}")
        # Downsampling per stage: the first convolution's stride 2 and one 2x max pooling.
        factors = stage_strides(image_size, [4] if convs == 1 else [2, 2])
        self.stem = nn.Identity()
        stages = []
        in_ch, size = in_channels, image_size
        for i, (kernel, factor) in enumerate(zip(KERNELS, factors, strict=False)):
            stride = 2 if i == 0 and factor > 1 else 1
            pool = factor // stride
            stages.append(nn.Sequential(ConvPool(in_ch, width, kernel, stride, pool)))
            in_ch, size = width, ((size - 1) // stride + 1) // pool
        self.stages = nn.ModuleList(stages)
        self.head = MimicHead(width, size, num_classes, width)
        init_weights(self)
        # init_weights gives a linear layer the small init of a classifier; the bottleneck and
        # the hidden layer are hidden layers and get He init, or the signal shrinks ~100x.
        for layer, gain in ((self.head.bottleneck, 1.0), (self.head.hidden, math.sqrt(2.0))):
            nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(layer.in_features))
        nn.init.constant_(self.head.bn.weight, math.sqrt(READOUT_UNITS / self.head.bn.num_features))
