"""Architectures: shapes, features, ONNX export, and Rocket's shared/extracted networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.models import ARCHITECTURES, build_model, count_params, is_architecture
from export.models.rocket import RocketNet, RocketSharingError, extract_standalone


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(arch: str, size: int = 8, channels: int = 1) -> Any:
    return build_model(arch, in_channels=channels, num_classes=10, image_size=size)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_gives_logits_and_stage_features(arch: str) -> None:
    net = _net(arch, 32, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 10)
    assert len(feats) == len(net.stages) and feats[-1].shape[-1] >= 2
    assert [f.shape[1] for f in feats] == net.stage_channels()
    assert torch.equal(net(x), logits)
    small = _net(arch).eval()  # digits: 1x8x8, downsampling adapted so 2x2 maps remain
    logits8, feats8 = small(torch.randn(2, 1, 8, 8), return_features=True)
    assert logits8.shape == (2, 10) and feats8[-1].shape[-2:] == (2, 2)


def test_published_sizes() -> None:
    # Parameter counts of the CIFAR literature (RepDistiller's tables) for the same definitions.
    counts = {a: count_params(_net(a, 32, 3)) for a in ("resnet20", "resnet56", "wrn-40-2")}
    assert 0.26e6 < counts["resnet20"] < 0.28e6
    assert 0.84e6 < counts["resnet56"] < 0.87e6
    assert 2.2e6 < counts["wrn-40-2"] < 2.3e6


def test_is_architecture_agrees_with_build_model() -> None:
    names = [*ARCHITECTURES, "resnet21", "wrn-17-1", "wrn-16-0", "vgg16", "mobilenetv2-0"]
    names += ["shallow-1-8", "shallow-3-64", "shallow-0-64", "shallow-2-0", "shallow-64"]
    for name in names:
        try:
            _net(name)
            builds = True
        except ValueError:
            builds = False
        assert is_architecture(name) == builds, name


def test_bad_names_and_depths() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        _net("vgg16")
    with pytest.raises(ValueError, match="6n\\+2"):
        _net("resnet21")
    with pytest.raises(ValueError, match="6n\\+4"):
        _net("wrn-17-1")
    with pytest.raises(ValueError, match="1 or 2 convolution layers"):
        _net("shallow-3-64")


@pytest.mark.parametrize("arch", ["wrn-16-1", "resnet20", "mobilenetv2-0.25", "shallow-2-128"])
def test_onnx_export_with_dynamic_batch_matches_torch(arch: str, tmp_path: Path) -> None:
    net = _net(arch, 32, 3).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    (got,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def _rocket(sharing: str, booster: str = "wrn-16-1", light: str = "wrn-10-1") -> Any:
    torch.manual_seed(0)
    return RocketNet(_net(booster), _net(light), sharing)


def test_bottom_sharing_holds_the_very_same_tensors() -> None:
    rocket = _rocket("bottom")
    booster, light = rocket.booster, rocket.light
    assert light.stem is booster.stem
    assert light.stem.weight is booster.stem.weight
    for i, block in enumerate(light.stages[0]):
        assert block is booster.stages[0][i]
        pairs = zip(block.parameters(), booster.stages[0][i].parameters(), strict=True)
        for p_light, p_booster in pairs:
            assert p_light is p_booster
    assert light.stages[1] is not booster.stages[1]
    shared = {id(p) for p in rocket.shared_parameters()}
    assert shared == {id(p) for p in light.stem.parameters()} | {
        id(p) for p in light.stages[0].parameters()
    }


def test_interval_sharing_shares_convolutions_but_not_batch_norms() -> None:
    """As the authors' rocket_interval.py: every convolution of the light net is the booster's
    (the stem, and the first blocks of each stage, as many as the light net has); batch norms
    and the classifier are the light net's own."""
    rocket = RocketNet(_net("wrn-40-1", 32, 3), _net("wrn-16-1", 32, 3), "interval")
    light, booster = rocket.light, rocket.booster
    assert light.stem is booster.stem
    for s in range(3):
        assert len(light.stages[s]) == 2 < len(booster.stages[s]) == 6
        for b_block, l_block in zip(booster.stages[s][:2], light.stages[s], strict=True):
            assert l_block is not b_block
            assert l_block.conv1.weight is b_block.conv1.weight
            assert l_block.conv2.weight is b_block.conv2.weight
            assert l_block.bn1 is not b_block.bn1 and l_block.bn1.weight is not b_block.bn1.weight
    own = {
        n
        for n, p in light.named_parameters()
        if id(p) in {id(q) for q in rocket.light_only_parameters()}
    }
    assert own and all(".bn" in n or n.startswith(("bn", "head", "fc")) for n in own), own
    # WRN-40-1 (563,930) plus the light net's own batch norms and classifier (1,578)
    assert sum(p.numel() for p in rocket.parameters()) == 563_930 + 1_578


def test_interval_sharing_can_share_fewer_blocks() -> None:
    rocket = RocketNet(_net("wrn-40-1", 32, 3), _net("wrn-16-1", 32, 3), "interval", 1)
    for s in range(3):
        first, second = rocket.light.stages[s]
        assert first.conv1.weight is rocket.booster.stages[s][0].conv1.weight
        assert all(second.conv1.weight is not b.conv1.weight for b in rocket.booster.stages[s])
    with pytest.raises(RocketSharingError, match="fewer than 3 block"):
        RocketNet(_net("wrn-40-1", 32, 3), _net("wrn-16-1", 32, 3), "interval", 3)


def test_no_sharing_shares_nothing() -> None:
    assert _rocket("none").shared_parameters() == []


@pytest.mark.parametrize(
    ("booster", "light"),
    [("wrn-16-2", "wrn-10-1"), ("resnet20", "wrn-10-1"), ("mobilenetv2-0.5", "mobilenetv2-0.25")],
)
def test_mismatched_pairs_get_a_clear_error(booster: str, light: str) -> None:
    for sharing in ("bottom", "interval"):
        with pytest.raises(RocketSharingError, match="cannot share"):
            RocketNet(_net(booster), _net(light), sharing)
    RocketNet(_net(booster), _net(light), "none")  # no sharing: any pair trains jointly


def test_paper_pairing_wrn40_1_with_wrn16_1_is_supported() -> None:
    rocket = RocketNet(_net("wrn-40-1", 32, 3), _net("wrn-16-1", 32, 3), "bottom")
    light, booster = rocket(torch.randn(2, 3, 32, 32))
    assert light.shape == booster.shape == (2, 10)


@pytest.mark.parametrize("sharing", ["bottom", "interval", "none"])
def test_extracted_light_net_is_standalone_and_identical(sharing: str) -> None:
    rocket = _rocket(sharing)
    rocket.train()
    for _ in range(2):  # move BN statistics away from their initial values
        rocket(torch.randn(16, 1, 8, 8))
    rocket.eval()
    x = torch.randn(5, 1, 8, 8)
    light_logits, booster_logits = rocket(x)
    extracted = extract_standalone(rocket.light, _net("wrn-10-1")).eval()
    assert torch.equal(extracted(x), light_logits)
    assert torch.equal(rocket.booster(x), booster_logits)
    booster_ptrs = {p.data_ptr() for p in rocket.booster.parameters()}
    booster_ptrs |= {b.data_ptr() for b in rocket.booster.buffers()}
    assert all(p.data_ptr() not in booster_ptrs for p in extracted.parameters())
    assert count_params(extracted) == count_params(_net("wrn-10-1"))
    # Training the booster further no longer changes the extracted net.
    with torch.no_grad():
        for p in rocket.booster.parameters():
            p.add_(1.0)
    assert torch.equal(extracted(x), light_logits)


def _layers(net: Any, kind: type) -> list[Any]:
    return [m for m in net.modules() if isinstance(m, kind)]


def test_shallow_nets_are_shallow_and_wide() -> None:
    """shallow-c-w: c convolutions of w filters, a 2w linear bottleneck, an 8w ReLU layer."""
    net = _net("shallow-2-128", 32, 3).eval()
    convs = _layers(net, torch.nn.Conv2d)
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((5, 5), (2, 2), 128), ((3, 3), (1, 1), 128),
    ]  # fmt: skip
    linears = [(m.in_features, m.out_features) for m in _layers(net, torch.nn.Linear)]
    assert linears == [(128 * 4 * 4, 256), (256, 1024), (1024, 10)]
    assert count_params(net) > 5 * count_params(_net("wrn-16-1", 32, 3))  # WRN-16-1: 175k
    _, feats = net(torch.randn(2, 3, 32, 32), return_features=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 16, 16), (128, 8, 8)]
    assert net.stage_channels() == [128, 128]
    one = _net("shallow-1-256", 32, 3)
    assert len(_layers(one, torch.nn.Conv2d)) == 1 and len(one.stages) == 1
    _, feats = one(torch.randn(2, 3, 32, 32), return_features=True)
    assert tuple(feats[0].shape[1:]) == (256, 8, 8)


@pytest.mark.parametrize("size", [7, 9, 28, 33])
def test_shallow_nets_take_any_image_size(size: int) -> None:
    for arch in ("shallow-1-8", "shallow-2-8"):
        net = _net(arch, size, 3).eval()
        assert net(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_shallow_net_exports_and_quantizes_after_training(tmp_path: Path) -> None:
    """A trained shallow net passes the ONNX parity check and its int8 variant keeps top-1."""
    from export.checkpoint import load_trained
    from export.data import load_dataset
    from export.evaluate import logits_of, make_session
    from export.onnx_export import export_with_parity
    from export.quantize import quantize_int8
    from export.training import run_training
    from service.contract.preprocess import normalize_uint8

    cfg = {"student": "shallow-2-16", "epochs": 4, "threads": 1, "progress": False}
    result = run_training({**cfg, "out_dir": str(tmp_path / "run")})
    model, _ = load_trained(result.artifact_path)
    data = load_dataset("digits")
    fp32 = tmp_path / "m.onnx"
    assert export_with_parity(model, fp32, data.input_spec, data.test_images).ok
    int8 = quantize_int8(fp32, tmp_path / "m-int8.onnx", data.train_images, data.input_spec)
    x = normalize_uint8(data.test_images, data.input_spec)
    top1 = {
        p.name: float(np.mean(logits_of(make_session(p), x).argmax(1) == data.test_labels))
        for p in (fp32, int8)
    }
    assert top1["m.onnx"] >= 0.9 and top1["m.onnx"] - top1["m-int8.onnx"] <= 0.01, top1
