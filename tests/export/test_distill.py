"""Losses against hand computations, the gradient block, and the rocket/KD training steps."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from export.distill import METHODS, MethodContext, get_method
from export.distill.fitnet import hint_layers
from export.distill.kd import KDLoss, kd_loss
from export.distill.mimic import mimic_loss
from export.distill.rocket import RocketLoss, logit_hint
from export.models import build_model
from export.models.base import StagedNet
from export.models.rocket import RocketNet


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(arch: str) -> StagedNet:
    return build_model(arch, in_channels=1, num_classes=10, image_size=8)


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_registry_holds_every_method() -> None:
    assert set(METHODS) == {
        "baseline", "kd", "fitnet", "fitnet-one-stage", "fitnet-hints", "mimic", "rocket",
        "rocket-kd",
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        get_method("dml")


def test_kd_loss_equals_a_hand_computation() -> None:
    student = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    teacher = [[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]]
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s = _softmax([v / temperature for v in s_row])
        p_t = _softmax([v / temperature for v in t_row])
        expected += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    expected = expected / 2 * temperature**2  # batchmean over 2 rows, times T^2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # One row in closed form: s/T = (.5, 1, 1.5) and t/T = (1.5, 1, .5) share their log-sum-exp,
    # so log p_t - log p_s = (1, 0, -1) and KL = p_t[0] - p_t[2]; times T^2 = 4.
    closed = 4 * (math.exp(1.5) - math.exp(0.5)) / (math.exp(1.5) + math.e + math.exp(0.5))
    one_row = kd_loss(torch.tensor(student[:1]), torch.tensor(teacher[:1]), temperature)
    assert closed == pytest.approx(1.2806, abs=1e-4)
    assert one_row.item() == pytest.approx(closed, rel=1e-6)

    targets = torch.tensor([2, 0])
    ce = -(math.log(_softmax(student[0])[2]) + math.log(_softmax(student[1])[0])) / 2
    combined = KDLoss(temperature=2.0, alpha=0.9)(
        torch.tensor(student), torch.tensor(teacher), targets
    )
    assert combined.item() == pytest.approx(0.9 * expected + 0.1 * ce, rel=1e-6)


def test_mimic_and_hint_losses_by_hand() -> None:
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # rows: (1 + 4) and (1 + 4): mean 5; mimic halves it.
    assert mimic_loss(s, t).item() == pytest.approx(2.5)
    assert logit_hint(s, t, gradient_block=True).item() == pytest.approx(5.0)
    loss = RocketLoss(lam=0.5)(s, t, torch.tensor([1, 0]))
    # cross-entropies by hand: the light net (s) on labels 1 and 0, the booster (t) likewise
    ce_light = -(math.log(_softmax([1.0, 2.0])[1]) + math.log(_softmax([0.0, -1.0])[0])) / 2
    ce_booster = -(math.log(_softmax([0.0, 0.0])[1]) + math.log(_softmax([1.0, 1.0])[0])) / 2
    assert loss.ce_light.item() == pytest.approx(ce_light, rel=1e-6)
    assert loss.ce_booster.item() == pytest.approx(ce_booster, rel=1e-6)
    assert ce_booster == pytest.approx(math.log(2))  # two tied logits each
    assert loss.total.item() == pytest.approx(ce_light + ce_booster + 0.5 * 5.0, rel=1e-6)


def _hint_gradients(sharing: str, gradient_block: bool) -> Any:
    torch.manual_seed(0)
    rocket = RocketNet(_net("wrn-16-1"), _net("wrn-10-1"), sharing)
    light, booster = rocket(torch.randn(8, 1, 8, 8))
    logit_hint(light, booster, gradient_block).backward()
    return rocket


def _has_grad(p: torch.nn.Parameter) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


@pytest.mark.parametrize("sharing", ["bottom", "interval", "none"])
def test_gradient_block_keeps_the_hint_off_booster_only_parameters(sharing: str) -> None:
    blocked = _hint_gradients(sharing, gradient_block=True)
    assert blocked.booster_only_parameters()
    assert not any(_has_grad(p) for p in blocked.booster_only_parameters())
    assert all(_has_grad(p) for p in blocked.light.head.parameters())
    if sharing != "none":
        assert blocked.shared_parameters()
        assert any(_has_grad(p) for p in blocked.shared_parameters())
        if sharing == "bottom":
            assert _has_grad(blocked.light.stem.weight)

    open_ = _hint_gradients(sharing, gradient_block=False)
    assert all(_has_grad(p) for p in open_.booster.head.parameters())
    with_grad = [p for p in open_.booster_only_parameters() if _has_grad(p)]
    assert len(with_grad) > len(open_.booster_only_parameters()) // 2


def _ctx(options: dict[str, object], **extras: object) -> MethodContext:
    return MethodContext(options, "wrn-10-1", _net, extras=dict(extras))


def _step(method: torch.nn.Module) -> None:
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method.train()
    loss, logits = method(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    assert logits.shape == (16, 10)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params: list[torch.Tensor]) -> list[bool]:
    return [not torch.equal(b, p) for b, p in zip(before, params, strict=True)]


def test_joint_switch_on_trains_the_booster_too() -> None:
    torch.manual_seed(0)
    method: Any = get_method("rocket")(_ctx({"booster": "wrn-16-1", "joint": True}))
    booster = list(method.rocket.booster.parameters())
    before = _snapshot(booster)
    _step(method)
    assert all(_changed(before, booster))


def test_joint_switch_off_keeps_a_pretrained_booster_frozen() -> None:
    torch.manual_seed(0)
    pretrained = _net("wrn-16-1")
    method: Any = get_method("rocket")(
        _ctx({"booster": "wrn-16-1", "joint": False}, pretrained_booster=pretrained)
    )
    assert method.rocket.booster is pretrained
    booster = list(method.rocket.booster.parameters())
    buffers = [b.clone() for b in method.rocket.booster.buffers()]
    light_only = method.rocket.light_only_parameters()
    before, before_light = _snapshot(booster), _snapshot(light_only)
    _step(method)
    assert not any(_changed(before, booster))
    assert all(
        torch.equal(a, b) for a, b in zip(buffers, method.rocket.booster.buffers(), strict=True)
    )
    assert all(_changed(before_light, light_only))
    assert not method.rocket.booster.training and method.rocket.light.training


def test_joint_switch_off_without_a_pretrained_booster_is_an_error() -> None:
    with pytest.raises(ValueError, match="pretrained booster"):
        get_method("rocket")(_ctx({"booster": "wrn-16-1", "joint": False}))


def test_kd_teacher_is_frozen_and_outside_the_optimised_parameters() -> None:
    torch.manual_seed(0)
    teacher = _net("wrn-16-1").train()
    ctx = MethodContext({}, "wrn-10-1", _net, teacher=teacher, teacher_arch="wrn-16-1")
    method: Any = get_method("kd")(ctx)
    assert not teacher.training
    assert {id(p) for p in teacher.parameters()}.isdisjoint(id(p) for p in method.parameters())
    before = _snapshot(list(teacher.parameters()))
    stats = [b.clone() for b in teacher.buffers()]
    _step(method)
    method.train()
    assert not teacher.training
    assert not any(_changed(before, list(teacher.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(stats, teacher.buffers(), strict=True))


def _fitnet(name: str, **extras: object) -> Any:
    torch.manual_seed(0)
    teacher = _net("wrn-16-2")
    ctx = MethodContext({}, "wrn-10-1", _net, teacher, "wrn-16-2", extras=dict(extras))
    return get_method(name)(ctx)


def test_hint_layers_default_to_the_middle_and_the_same_relative_depth() -> None:
    assert hint_layers(3, 3) == (1, 1)
    assert hint_layers(3, 5) == (1, 2)
    assert hint_layers(2, 3) == (1, 2)  # a two-stage (shallow) student guides its last stage
    assert hint_layers(3, 3, hint_layer=0) == (0, 0)
    assert hint_layers(3, 3, hint_layer=2, teacher_hint_layer=-1) == (2, 2)
    assert hint_layers(3, 3, teacher_hint_layer=0) == (1, 0)
    with pytest.raises(ValueError, match=r"^hint_layer must be in 0\.\.2"):
        hint_layers(3, 3, hint_layer=3)
    with pytest.raises(ValueError, match=r"^teacher_hint_layer must be in 0\.\.2"):
        hint_layers(3, 3, teacher_hint_layer=3)


def test_fitnet_one_stage_trains_ce_and_hint_together() -> None:
    method = _fitnet("fitnet-one-stage")
    assert method.regressor.conv.in_channels == 32 and method.regressor.conv.out_channels == 64
    params = list(method.net.parameters())
    before = _snapshot(params)
    _step(method)
    assert set(method.last_terms) == {"ce", "hint"}
    assert method.regressor.conv.weight.grad is not None
    assert all(_changed(before, params))


def test_fitnet_hint_stage_trains_only_the_guided_layers_and_the_regressor() -> None:
    method = _fitnet("fitnet-hints")
    net = method.net
    assert method.hint_layer == 1 and method.teacher_hint_layer == 1
    lower = [*net.stem.parameters(), *net.stages[0].parameters(), *net.stages[1].parameters()]
    lower += list(method.regressor.parameters())
    upper = [*net.stages[2].parameters(), *net.head.parameters()]
    upper_buffers = [*net.stages[2].buffers(), *net.head.buffers()]
    before, before_upper = _snapshot(lower), _snapshot(upper)
    stats = _snapshot(upper_buffers)
    teacher_before = _snapshot(list(method.teacher.parameters()))
    _step(method)
    _step(method)
    assert set(method.last_terms) == {"hint"}
    assert all(_changed(before, lower))
    assert not any(_changed(before_upper, upper))
    assert not any(_changed(stats, upper_buffers))
    assert not any(_changed(teacher_before, list(method.teacher.parameters())))
    assert not any(p.requires_grad for p in upper)
    assert not net.stages[2].training and not net.head.training and net.stages[1].training


def test_fitnet_stage_two_starts_from_stage_one_and_trains_every_layer() -> None:
    stage1 = _net("wrn-10-1")
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(0.5)
    method = _fitnet("fitnet", hint_trained_student=stage1)
    for (name, a), b in zip(
        method.net.state_dict().items(), stage1.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert method.net is not stage1 and not hasattr(method, "regressor")
    params = list(method.net.parameters())
    before = _snapshot(params)
    _step(method)
    assert all(_changed(before, params))


def test_fitnet_without_its_hint_stage_is_an_error() -> None:
    with pytest.raises(ValueError, match="fitnet-one-stage"):
        _fitnet("fitnet")
