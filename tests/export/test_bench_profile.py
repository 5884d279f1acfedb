"""``export bench --profile``: a step's CPU time by kind, depthwise convolutions told apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.__main__ import main
from export.bench_profile import DEPTHWISE_BACKWARD, KINDS, kind_of


def test_kinds_tell_depthwise_convolutions_from_the_others() -> None:
    activations, depthwise_w, dense_w = [64, 96, 16, 16], [96, 1, 3, 3], [96, 32, 1, 1]
    assert kind_of("aten::convolution_backward", [activations, activations, depthwise_w]) == (
        DEPTHWISE_BACKWARD
    )
    assert kind_of("aten::convolution_backward", [activations, activations, dense_w]) == (
        "convolution backward, other"
    )
    assert kind_of("aten::mkldnn_convolution", [activations, depthwise_w, [96]]) == (
        "convolution forward, depthwise"
    )
    # a 1-channel image through a dense 3x3 filter bank is not depthwise: one filter sees all
    dense = kind_of("aten::mkldnn_convolution", [[8, 1, 28, 28], [16, 1, 3, 3]])
    assert dense == "convolution forward, other"
    assert kind_of("aten::native_batch_norm_backward", []) == "batch norm backward"
    assert kind_of("aten::hardtanh_backward", []).startswith("activation")
    assert kind_of("aten::copy_", []).startswith("copies")
    assert kind_of("Optimizer.step#SGD.step", []) == "optimizer step"
    assert kind_of("aten::add_", []) == "the rest"


def test_bench_profile_finds_the_depthwise_backward_of_a_mobilenet_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_json = tmp_path / "b.json"
    argv = ["bench", "--archs", "mobilenetv2-0.25", "resnet8", "--seconds", "0", "--batch-size",
            "8", "--threads", "1", "--profile", "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "where a step of mobilenetv2-0.25 (fp32) goes" in out
    rows = {r["arch"]: r for r in json.loads(out_json.read_text())["rows"]}
    mobile, resnet = rows["mobilenetv2-0.25"]["profile_ms"], rows["resnet8"]["profile_ms"]
    assert set(mobile) == set(resnet) == set(KINDS)
    assert mobile[DEPTHWISE_BACKWARD] > 0 and mobile["convolution forward, depthwise"] > 0
    assert resnet[DEPTHWISE_BACKWARD] == 0 and resnet["convolution backward, other"] > 0
    # the profiled step took at least about what the timed ones did (profiling only slows it)
    assert sum(mobile.values()) > 0.3 * rows["mobilenetv2-0.25"]["ms_per_step"]
    assert "the profiled step took" in out and "%" in out.split("goes")[1]
