"""The training methods: baseline, kd, the FitNets stages, mimic, rocket, rocket-kd."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from export.distill.fitnet import HintRegressor, hint_layers, hint_loss
from export.distill.kd import KDLoss, kd_loss
from export.distill.mimic import mimic_loss
from export.distill.registry import DistillMethod, MethodContext, register
from export.distill.rocket import RocketLoss
from export.models.base import StagedNet
from export.models.rocket import RocketNet


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@register("baseline")
class Baseline(DistillMethod):
    """Cross-entropy on the labels only."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.net = ctx.make_net(ctx.student_arch)
        self.label_smoothing = float(ctx.options.get("label_smoothing", 0.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE(y, student)."""
        logits = self.net(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    def student(self) -> StagedNet:
        """The trained network."""
        return self.net


@register("kd")
class KnowledgeDistillation(Baseline):
    """Hinton KD from a frozen teacher: alpha * KL * T^2 + (1 - alpha) * CE."""

    needs_teacher = True
    teacher_logits_only = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.loss = KDLoss(
            float(ctx.options.get("temperature", 4.0)),
            float(ctx.options.get("alpha", 0.9)),
            self.label_smoothing,
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KD loss against the teacher's logits."""
        logits = self.net(x)
        return self.loss(logits, self.teacher_logits(x), y), logits


class HintedStudent(Baseline):
    """A student with a FitNets regressor from its guided stage to the teacher's hint stage."""

    needs_teacher = True
    teacher_logits_only = False  # the hint is an inner stage of the teacher

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.hint_layer, self.teacher_hint_layer = hint_layers(
            len(self.net.stages),
            len(self.teacher.stages),
            _optional_int(ctx.options.get("hint_layer")),
            _optional_int(ctx.options.get("teacher_hint_layer")),
        )
        self.regressor = HintRegressor(
            self.net.stage_channels()[self.hint_layer],
            self.teacher.stage_channels()[self.teacher_hint_layer],
        )

    def hint_term(self, guided: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """MSE(regressor(student guided stage), teacher hint stage); the teacher runs only up to
        its hint stage."""
        teacher = self.teacher
        with torch.no_grad():
            hint = teacher.stem(x)
            for stage in teacher.stages[: self.teacher_hint_layer + 1]:
                hint = stage(hint)
        return hint_loss(self.regressor(guided, tuple(hint.shape[-2:])), hint)


@register("fitnet-one-stage")
class FitNetOneStage(HintedStudent):
    """CE plus hint_weight * hint loss, trained together in one stage."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.hint_weight = float(ctx.options.get("hint_weight", 2.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE + weighted hint loss."""
        logits, feats = self.net(x, return_features=True)
        hint = self.hint_term(feats[self.hint_layer], x)
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.last_terms = {"ce": ce.detach(), "hint": hint.detach()}
        return ce + self.hint_weight * hint, logits


@register("fitnet-hints")
class FitNetHintStage(HintedStudent):
    """FitNets stage 1: the student's stem and stages up to the guided one, plus the regressor,
    learn the hint loss alone; the stages above and the head stay frozen, in eval mode.

    Run inside a ``fitnet`` run (its ``fitnet-hints/`` sub-run); on its own it delivers a
    student whose upper layers are untrained.
    """

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        for module in self.upper_layers():
            for p in module.parameters():
                p.requires_grad_(False)

    def upper_layers(self) -> list[nn.Module]:
        """The student's stages above the guided one, and its head."""
        return [*self.net.stages[self.hint_layer + 1 :], self.net.head]

    def train(self, mode: bool = True) -> FitNetHintStage:
        """Train mode, except that the frozen upper layers keep their batch-norm statistics."""
        super().train(mode)
        for module in self.upper_layers():
            module.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hint loss, and the logits of the student as it stands (for the log only)."""
        h = self.net.stem(x)
        for stage in self.net.stages[: self.hint_layer + 1]:
            h = stage(h)
        hint = self.hint_term(h, x)
        with torch.no_grad():
            upper = h.detach()
            for stage in self.net.stages[self.hint_layer + 1 :]:
                upper = stage(upper)
            logits = self.net.head(upper)
        self.last_terms = {"hint": hint.detach()}
        return hint, logits


@register("fitnet")
class FitNet(KnowledgeDistillation):
    """FitNets stage 2: KD of the whole student from the teacher, starting from the student that
    stage 1 (``fitnet-hints``) trained, given as ``extras["hint_trained_student"]``."""

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        stage1 = ctx.extras.get("hint_trained_student")
        if stage1 is None:
            raise ValueError(
                "fitnet starts from the student of its hint stage (fitnet-hints); run_training "
                "trains it first, or use fitnet-one-stage"
            )
        self.net.load_state_dict(stage1.state_dict())


@register("mimic")
class Mimic(Baseline):
    """SNN-MIMIC: L2 regression on the teacher's logits (plus optional ce_weight * CE)."""

    needs_teacher = True
    teacher_logits_only = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.ce_weight = float(ctx.options.get("ce_weight", 0.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit regression."""
        logits = self.net(x)
        loss = mimic_loss(logits, self.teacher_logits(x))
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, y)
        return loss, logits


@register("rocket")
class RocketLaunching(DistillMethod):
    """Booster and light net trained together with the logit hint and the gradient block.

    Switches: ``joint`` (False: the booster is trained on its own first and stays frozen),
    ``sharing`` (bottom / interval / none), ``gradient_block``.
    """

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        opts = ctx.options
        self.booster_arch = str(opts["booster"])
        self.joint = bool(opts.get("joint", True))
        pretrained = ctx.extras.get("pretrained_booster")
        if not self.joint and pretrained is None:
            raise ValueError("rocket with joint=False needs a pretrained booster")
        booster = pretrained if pretrained is not None else ctx.make_net(self.booster_arch)
        self.rocket = RocketNet(
            booster,
            ctx.make_net(ctx.student_arch),
            str(opts.get("sharing", "bottom")),
            int(opts.get("interval_blocks", 0)),
        )
        self.loss = RocketLoss(
            float(opts.get("lambda", 0.03)),
            bool(opts.get("gradient_block", True)),
            float(opts.get("label_smoothing", 0.0)),
        )
        if not self.joint:
            for p in self.rocket.booster.parameters():
                p.requires_grad_(False)  # shared layers included: they are the booster's
            self.find_unused_parameters = True

    def train(self, mode: bool = True) -> RocketLaunching:
        """Train mode, except a frozen booster stays in eval mode."""
        super().train(mode)
        if not self.joint:
            self.rocket.booster.eval()
        return self

    def rocket_terms(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rocket loss and the light logits."""
        light, booster = self.rocket(x)
        terms = self.loss(light, booster, y, train_booster=self.joint)
        self.last_terms = {
            "ce_light": terms.ce_light.detach(),
            "ce_booster": terms.ce_booster.detach(),
            "hint": terms.hint.detach(),
        }
        return terms.total, light

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE(light) + CE(booster) + lambda * hint."""
        return self.rocket_terms(x, y)

    def student(self) -> StagedNet:
        """The light net (still wired to the booster; extract it before export)."""
        return self.rocket.light

    def outputs(self) -> dict[str, tuple[StagedNet, str]]:
        """The light net and the booster."""
        return {
            "student": (self.rocket.light, self.student_arch),
            "booster": (self.rocket.booster, self.booster_arch),
        }


@register("rocket-kd")
class RocketKD(RocketLaunching):
    """Rocket plus KD from a separately trained teacher on the light net's logits."""

    needs_teacher = True
    teacher_logits_only = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.temperature = float(ctx.options.get("temperature", 4.0))
        self.kd_weight = float(ctx.options.get("kd_weight", 1.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rocket loss + kd_weight * KD(teacher -> light)."""
        total, light = self.rocket_terms(x, y)
        kd = kd_loss(light, self.teacher_logits(x), self.temperature)
        self.last_terms["kd"] = kd.detach()
        return total + self.kd_weight * kd, light
