"""Params and MACs counted from ONNX graphs match hand counts for conv, depthwise and linear."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from export.complexity import count_complexity
from export.onnx_export import export_onnx
from export.quantize import quantize_int8
from service.contract.model_card import InputSpec, ResizeSpec

SPEC = InputSpec(
    name="input",
    shape=(3, 16, 16),
    color="rgb",
    resize=ResizeSpec(height=16, width=16, resample="bilinear"),
    scale=1 / 255,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
)


class _Net(nn.Module):
    """conv 3x3 stride 2 -> depthwise 3x3 -> pointwise 1x1 -> grouped 3x3 -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.grouped(self.pw(self.dw(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _hand_macs() -> int:
    out = 8 * 8  # 16x16 input, stride 2
    return (
        out * 16 * 3 * 3 * 3  # conv: each output element sums 3 channels x 3x3
        + out * 16 * 1 * 3 * 3  # depthwise: one channel per group
        + out * 32 * 16  # pointwise
        + out * 32 * (32 // 4) * 3 * 3  # grouped: 8 channels per group
        + 32 * 10  # linear
    )


def test_counts_match_hand_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    path = export_onnx(net, tmp_path / "net.onnx", SPEC)
    got = count_complexity(path)
    assert got.macs == _hand_macs() == 217_408
    # The exporter folds BatchNorm into the conv, adding a bias of 16 and dropping 4x16 BN values.
    torch_params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("bn."))
    assert got.params == torch_params + 16


def test_quantized_graph_counts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_onnx(_Net().eval(), tmp_path / "net.onnx", SPEC)
    images = torch.randint(0, 256, (32, 16, 16, 3), dtype=torch.uint8).numpy()
    int8 = quantize_int8(path, tmp_path / "int8.onnx", images, SPEC)
    assert count_complexity(int8) == count_complexity(path)


def test_counts_the_fixture_logistic_regression(digits_repo: Path) -> None:
    got = count_complexity(digits_repo / "digits-logreg" / "1" / "model.onnx")
    assert got.params == 64 * 10 + 10
    assert got.macs == 64 * 10
    # digits-slow adds 8 pairs of 64x64 MatMuls in front of the Gemm.
    slow = count_complexity(digits_repo / "digits-slow" / "1" / "model.onnx")
    assert slow.params == 650 + 8 * 2 * 64 * 64
    assert slow.macs == 640 + 8 * 2 * 64 * 64
