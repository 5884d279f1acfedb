"""Architectures by name: CIFAR ResNets, Wide ResNets, MobileNetV2, shallow nets, built alike."""

from __future__ import annotations

import re

from torch import nn

from export.models.base import StagedNet
from export.models.mobilenetv2 import MobileNetV2
from export.models.resnet import CifarResNet
from export.models.shallow import ShallowNet
from export.models.wrn import WideResNet

__all__ = [
    "ARCHITECTURES",
    "CIFAR_ARCHITECTURES",
    "StagedNet",
    "build_model",
    "count_params",
    "is_architecture",
]

CIFAR_ARCHITECTURES = (
    "resnet20", "resnet56", "resnet110",
    "wrn-16-1", "wrn-16-2", "wrn-40-1", "wrn-40-2",
    "mobilenetv2-0.25", "mobilenetv2-0.5", "mobilenetv2-1.0",
    "shallow-2-128",
)  # fmt: skip
# Small members of the same families, quick enough to train on digits in seconds.
SMALL_ARCHITECTURES = ("resnet8", "resnet14", "wrn-10-1", "wrn-10-2", "shallow-2-16")
ARCHITECTURES = CIFAR_ARCHITECTURES + SMALL_ARCHITECTURES

_RESNET = re.compile(r"^resnet(\d+)$")
_WRN = re.compile(r"^wrn-(\d+)-(\d+)$")
_MOBILENET = re.compile(r"^mobilenetv2-(\d+(?:\.\d+)?)$")
_SHALLOW = re.compile(r"^shallow-(\d+)-(\d+)$")


def build_model(arch: str, *, in_channels: int, num_classes: int, image_size: int) -> StagedNet:
    """A freshly initialised network; any resnet(6n+2), wrn-(6n+4)-k, mobilenetv2-<mult> or
    shallow-<convs 1|2>-<width> works."""
    if in_channels <= 0 or num_classes < 2 or image_size <= 0:
        raise ValueError(
            f"bad model shape: in_channels={in_channels}, num_classes={num_classes}, "
            f"image_size={image_size}"
        )
    kwargs = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    if m := _RESNET.match(arch):
        return CifarResNet(int(m.group(1)), **kwargs)
    if m := _WRN.match(arch):
        return WideResNet(int(m.group(1)), int(m.group(2)), **kwargs)
    if m := _MOBILENET.match(arch):
        return MobileNetV2(float(m.group(1)), **kwargs)
    if m := _SHALLOW.match(arch):
        return ShallowNet(int(m.group(1)), int(m.group(2)), **kwargs)
    raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")


def is_architecture(name: str) -> bool:
    """True when build_model accepts ``name`` (family and depth rule)."""
    if m := _RESNET.match(name):
        return int(m.group(1)) >= 8 and (int(m.group(1)) - 2) % 6 == 0
    if m := _WRN.match(name):
        return int(m.group(1)) >= 10 and (int(m.group(1)) - 4) % 6 == 0 and int(m.group(2)) >= 1
    if m := _MOBILENET.match(name):
        return float(m.group(1)) > 0
    if m := _SHALLOW.match(name):
        return int(m.group(1)) in (1, 2) and int(m.group(2)) >= 1
    return False


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())
