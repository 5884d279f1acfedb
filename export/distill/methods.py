"""The training methods: baseline, kd, fitnet, mimic, rocket, rocket-kd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from export.distill.fitnet import HintRegressor, hint_loss
from export.distill.kd import KDLoss, kd_loss
from export.distill.mimic import mimic_loss
from export.distill.registry import DistillMethod, MethodContext, register
from export.distill.rocket import RocketLoss
from export.models.base import StagedNet
from export.models.rocket import RocketNet


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


@register("fitnet")
class FitNet(Baseline):
    """CE plus hint_weight * MSE(regressor(student layer), teacher hint layer)."""

    needs_teacher = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        stages = len(self.net.stages)
        default = stages // 2
        self.hint_layer = int(ctx.options.get("hint_layer", default))
        teacher_layer = int(ctx.options.get("teacher_hint_layer", -1))
        t_channels = self.teacher.stage_channels()
        self.teacher_hint_layer = (
            teacher_layer if teacher_layer >= 0 else round(self.hint_layer * (len(t_channels) - 1)
                                                           / max(1, stages - 1))
        )  # fmt: skip
        if not 0 <= self.hint_layer < stages:
            raise ValueError(f"hint_layer must be in 0..{stages - 1}, got {self.hint_layer}")
        if not 0 <= self.teacher_hint_layer < len(t_channels):
            raise ValueError(f"teacher_hint_layer must be in 0..{len(t_channels) - 1}")
        self.regressor = HintRegressor(
            self.net.stage_channels()[self.hint_layer], t_channels[self.teacher_hint_layer]
        )
        self.hint_weight = float(ctx.options.get("hint_weight", 2.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE + weighted hint loss."""
        logits, feats = self.net(x, return_features=True)
        _, t_feats = self.teacher_logits(x, features=True)
        hint_t = t_feats[self.teacher_hint_layer]
        hint = hint_loss(self.regressor(feats[self.hint_layer], tuple(hint_t.shape[-2:])), hint_t)
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.last_terms = {"ce": ce.detach(), "hint": hint.detach()}
        return ce + self.hint_weight * hint, logits


@register("mimic")
class Mimic(Baseline):
    """SNN-MIMIC: L2 regression on the teacher's logits (plus optional ce_weight * CE)."""

    needs_teacher = True

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
            int(opts.get("interval_blocks", 1)),
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
