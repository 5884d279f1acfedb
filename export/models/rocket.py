"""Rocket Launching's joint network: a booster and a light net that share their lower layers.

"bottom" sharing: the light net's stem and first stage ARE the booster's stem and first blocks
(the very same modules), so the light branch forks off the booster's trunk after those blocks
and the shared computation runs once. "interval" sharing, as the authors' code does it
(zhougr1993/Rocket-Launching, rocket_interval.py with param_share): every convolution of the light
net is the booster's, the stem's and those of the first blocks of every stage (all the light
net's blocks by default), while the light net keeps its own batch norms and classifier.
"none" trains two independent nets jointly (the paper's ablation without sharing).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import nn

from export.models.base import StagedNet

Sharing = Literal["bottom", "interval", "none"]
SHARING_MODES: tuple[str, ...] = ("bottom", "interval", "none")


class RocketSharingError(ValueError):
    """Booster and light net cannot share layers (different families, widths or strides)."""


def _shapes(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(p.shape)) for name, p in module.named_parameters()]


def _require_same(what: str, booster: nn.Module, light: nn.Module) -> None:
    if type(booster) is not type(light):
        raise RocketSharingError(
            f"cannot share {what}: booster has a {type(booster).__name__}, light net a "
            f"{type(light).__name__}; use one family (e.g. wrn-40-1 with wrn-16-1)"
        )
    if _shapes(booster) != _shapes(light):
        b = {n: s for n, s in _shapes(booster)}
        l_ = {n: s for n, s in _shapes(light)}
        diff = next((n for n in b if b.get(n) != l_.get(n)), next(iter(l_), "?"))
        raise RocketSharingError(
            f"cannot share {what}: booster has {diff} {b.get(diff)}, light net has "
            f"{l_.get(diff)}; use a booster and light net of one family with the same stage "
            "widths and strides (e.g. wrn-40-1 with wrn-16-1, resnet56 with resnet20)"
        )


def _share_convs(booster_block: nn.Module, light_block: nn.Module) -> None:
    """Make every conv/linear of ``light_block`` the booster's module; BNs stay separate.
    ``light_block`` must not itself be a conv (share its parent's attribute instead)."""
    for name, module in list(booster_block.named_modules()):
        if not name:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parent_name, _, attr = name.rpartition(".")
            parent = light_block.get_submodule(parent_name) if parent_name else light_block
            setattr(parent, attr, module)


def _stage(net: StagedNet, index: int) -> nn.Sequential:
    return cast(nn.Sequential, net.stages[index])


def shared_parameter_ids(booster: nn.Module, light: nn.Module) -> set[int]:
    """ids of the parameter tensors both nets hold."""
    return {id(p) for p in booster.parameters()} & {id(p) for p in light.parameters()}


class RocketNet(nn.Module):
    """Booster and light net trained together; forward returns (light_logits, booster_logits)."""

    def __init__(
        self, booster: StagedNet, light: StagedNet, sharing: str, interval_blocks: int = 0
    ) -> None:
        super().__init__()
        if sharing not in SHARING_MODES:
            raise RocketSharingError(f"sharing must be one of {SHARING_MODES}, not {sharing!r}")
        if len(booster.stages) != len(light.stages):
            raise RocketSharingError(
                f"booster has {len(booster.stages)} stages, light net {len(light.stages)}"
            )
        if sharing != "none" and type(booster) is not type(light):
            raise RocketSharingError(
                f"cannot share layers between a {type(booster).__name__} booster and a "
                f"{type(light).__name__} light net: use one family with the same stage widths "
                "(e.g. wrn-40-1 with wrn-16-1, resnet56 with resnet20) or sharing 'none'"
            )
        self.sharing = sharing
        self.booster = booster
        self.light = light
        self.fork_blocks = 0
        if sharing == "bottom":
            _require_same("the stem", booster.stem, light.stem)
            n = len(_stage(light, 0))
            if n > len(_stage(booster, 0)):
                raise RocketSharingError("the light net's first stage is deeper than the booster's")
            for i in range(n):
                _require_same(f"stage 1 block {i + 1}", _stage(booster, 0)[i], _stage(light, 0)[i])
            light.stem = booster.stem
            for i in range(n):
                _stage(light, 0)[i] = _stage(booster, 0)[i]
            self.fork_blocks = n
        elif sharing == "interval":
            if interval_blocks < 0:
                raise RocketSharingError("interval_blocks must be >= 0 (0: every light block)")
            _require_same("the stem", booster.stem, light.stem)
            if isinstance(booster.stem, (nn.Conv2d, nn.Linear)):
                light.stem = booster.stem
            else:
                _share_convs(booster.stem, light.stem)
            for s in range(len(booster.stages)):
                b_stage, l_stage = _stage(booster, s), _stage(light, s)
                blocks = interval_blocks or len(l_stage)
                if blocks > min(len(b_stage), len(l_stage)):
                    raise RocketSharingError(
                        f"stage {s + 1} has fewer than {blocks} block(s) to share"
                    )
                for i in range(blocks):
                    _require_same(f"stage {s + 1} block {i + 1}", b_stage[i], l_stage[i])
                    _share_convs(b_stage[i], l_stage[i])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the light net and of the booster."""
        if self.sharing != "bottom":
            return self.light(x), self.booster(x)
        h = self.booster.stem(x)
        first = _stage(self.booster, 0)
        for i in range(self.fork_blocks):
            h = first[i](h)
        fork = h  # end of the shared trunk: the light branch leaves here
        for i in range(self.fork_blocks, len(first)):
            h = first[i](h)
        for stage in self.booster.stages[1:]:
            h = stage(h)
        booster_logits = self.booster.head(h)
        light_h = fork
        for stage in self.light.stages[1:]:
            light_h = stage(light_h)
        return self.light.head(light_h), booster_logits

    def booster_only_parameters(self) -> list[nn.Parameter]:
        """Parameters that belong to the booster and not to the light net."""
        light_ids = {id(p) for p in self.light.parameters()}
        return [p for p in self.booster.parameters() if id(p) not in light_ids]

    def light_only_parameters(self) -> list[nn.Parameter]:
        """Parameters that belong to the light net and not to the booster."""
        booster_ids = {id(p) for p in self.booster.parameters()}
        return [p for p in self.light.parameters() if id(p) not in booster_ids]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters held by both nets (the very same tensors)."""
        ids = shared_parameter_ids(self.booster, self.light)
        return [p for p in self.light.parameters() if id(p) in ids]


def extract_standalone(net: StagedNet, fresh: StagedNet) -> StagedNet:
    """Copy ``net``'s weights into ``fresh`` (same architecture, built anew): no tensor is shared
    with anything else afterwards, so the extracted light net holds no booster parameter."""
    fresh.load_state_dict({k: v.detach().clone() for k, v in net.state_dict().items()})
    return fresh
