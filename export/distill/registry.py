"""The method registry: each method is a loss plus a training step (an nn.Module)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from export.models.base import StagedNet


@dataclass
class MethodContext:
    """What a method factory gets: its options, a net builder and an optional frozen teacher."""

    options: dict[str, Any]
    student_arch: str
    make_net: Callable[[str], StagedNet]
    teacher: StagedNet | None = None
    teacher_arch: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """``forward(x, y) -> (loss, student_logits)``: one training step's loss.

    Subclasses register trainable modules as attributes; a frozen teacher is kept outside the
    module tree (no optimizer state, no checkpoint entry, never in train mode).
    """

    needs_teacher: bool = False
    # True when the teacher is only ever asked for its logits on the training batch: the trainer
    # may then hand over stored logits (export/training/soft_labels.py) instead of running it.
    teacher_logits_only: bool = False
    find_unused_parameters: bool = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()
        self.student_arch = ctx.student_arch
        self._teacher: tuple[StagedNet, ...] = ()
        if ctx.teacher is not None:
            teacher = ctx.teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self._teacher = (teacher,)
        self.last_terms: dict[str, torch.Tensor] = {}
        self._given_logits: torch.Tensor | None = None

    @property
    def teacher(self) -> StagedNet:
        """The frozen teacher (eval mode, no grad)."""
        if not self._teacher:
            raise RuntimeError(f"{type(self).__name__} has no teacher")
        return self._teacher[0]

    def _apply(self, fn: Any, recurse: bool = True) -> DistillMethod:
        """Move/cast the frozen teacher with the method (it is outside the module tree)."""
        super()._apply(fn, recurse)
        for t in self._teacher:
            t._apply(fn, recurse)
        return self

    def give_teacher_logits(self, logits: torch.Tensor) -> None:
        """The teacher's logits on the next batch, computed ahead (read by ``teacher_logits``)."""
        self._given_logits = logits

    def teacher_logits(self, x: torch.Tensor, features: bool = False) -> Any:
        """Teacher output under no_grad (with features when asked); the given logits instead of
        a forward pass when the trainer handed them over for this batch."""
        given, self._given_logits = self._given_logits, None
        if given is not None and not features:
            if given.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"given teacher logits hold {given.shape[0]} rows for a batch of {x.shape[0]}"
                )
            return given
        with torch.no_grad():
            return self.teacher(x, return_features=features)

    def student(self) -> StagedNet:
        """The network this run delivers (the student, or the light net)."""
        raise NotImplementedError

    def outputs(self) -> dict[str, tuple[StagedNet, str]]:
        """Artifacts to save after training: name -> (network, architecture)."""
        return {"student": (self.student(), self.student_arch)}


MethodFactory = Callable[[MethodContext], DistillMethod]
METHODS: dict[str, type[DistillMethod]] = {}


def register(name: str) -> Callable[[type[DistillMethod]], type[DistillMethod]]:
    """Class decorator adding a method to the registry under ``name``."""

    def add(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = cls
        return cls

    return add


def get_method(name: str) -> type[DistillMethod]:
    """The method class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
