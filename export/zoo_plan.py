"""A zoo's cost in CPU-hours before it runs, each entry priced from img/s measured here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.bench_train import bench_arch
from export.distill import get_method
from export.models import build_model
from export.training.config import DEFAULTS, HINT_STAGE_FRACTION, TEACHER_METHODS
from export.training.runtime import describe_device, resolve_precision
from export.zoo_config import ZOO_TEACHER
from export.zoo_plan_record import PlannedCost, PlanRecord, hm


@dataclass(frozen=True)
class Rates:
    """Measured throughput on one thread: training img/s per architecture and the teacher's
    forward (eval, no grad) img/s."""

    train: dict[str, float]
    teacher_forward: float


@dataclass(frozen=True)
class PlannedEntry:
    """One entry's cost."""

    name: str
    method: str
    epochs: float
    cpu_hours: float
    teacher_logit_hours: float  # of which: the teacher's logits (a stream's first run)
    conditional: bool = False  # a second seed, trained only when its first seed's gap is in noise
    images: int = 0  # training images an epoch


def _entry_config(entry: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS, **config.get("defaults", {}), **entry}


def architectures(config: dict[str, Any]) -> list[str]:
    """Every architecture the zoo trains (students, boosters, the teacher), teacher first."""
    archs = [str(config["teacher"]["student"])]
    for entry in config["students"]:
        cfg = _entry_config(entry, config)
        for arch in (cfg["student"], cfg.get("booster")):
            if arch and str(arch) not in archs:
                archs.append(str(arch))
    return archs


def plan_zoo(config: dict[str, Any], rates: Rates, train_images: int) -> list[PlannedEntry]:
    """The cost of every entry in one-thread CPU-hours, in the config's order.

    A step costs the forward and backward of every network trained in it (Rocket: booster and
    light net, sharing ignored, so an upper bound); a live teacher adds its forward pass; stored
    teacher logits cost one teacher forward per image the first time a (seed, epoch) is needed.
    """
    teacher_arch = str(config["teacher"]["student"])
    logits_done: dict[int, float] = {}  # seed -> epochs of stored logits so far
    planned = []
    for entry in [config["teacher"], *config["students"]]:
        cfg = _entry_config(entry, config)
        seed = int(cfg.get("seed", config.get("seed", 0)))
        epochs = float(cfg["epochs"])
        method = str(cfg["method"])
        n = min(train_images, cfg.get("max_train_images") or train_images)
        per_image = 1.0 / rates.train[str(cfg["student"])]
        booster = str(cfg.get("booster") or teacher_arch)
        if method in ("rocket", "rocket-kd"):
            per_image += 1.0 / rates.train[booster]
        seconds = epochs * n * per_image
        if method == "rocket" and cfg.get("joint") is False:  # the booster first, then frozen
            seconds += epochs * n / rates.train[booster]
        logit_seconds = 0.0
        uses_teacher = method in TEACHER_METHODS and cfg.get("teacher") in (ZOO_TEACHER, None)
        if uses_teacher and method == "fitnet":  # stage 1 runs the teacher live (its hint stage)
            hint = cfg.get("hint_epochs") or epochs * HINT_STAGE_FRACTION
            seconds += hint * n / rates.teacher_forward
            stored_epochs = epochs - hint
        else:
            stored_epochs = epochs
        # the soft-label store computes logits once per (seed, epoch) for logits-only methods
        if uses_teacher and get_method(method).teacher_logits_only:
            new = max(0.0, stored_epochs - logits_done.get(seed, 0.0))
            logit_seconds = new * n / rates.teacher_forward
            logits_done[seed] = max(logits_done.get(seed, 0.0), stored_epochs)
        elif uses_teacher:  # a live teacher every step (fitnet-one-stage)
            seconds += epochs * n / rates.teacher_forward
        planned.append(
            PlannedEntry(
                name=str(cfg["name"]),
                method=method,
                epochs=epochs,
                cpu_hours=(seconds + logit_seconds) / 3600,
                teacher_logit_hours=logit_seconds / 3600,
                conditional=bool(entry.get("second_seed_of")),
                images=n,
            )
        )
    return planned


def measure_rates(
    archs: list[str],
    teacher_arch: str,
    *,
    batch_size: int,
    precision: str,
    seconds: float,
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
) -> Rates:
    """Training img/s of every architecture and the teacher's forward img/s, on one thread."""
    device = torch.device("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = {
            arch: bench_arch(
                arch,
                device,
                batch_size=batch_size,
                min_seconds=seconds,
                precision=resolve_precision(precision, device),
                image_size=image_size,
                in_channels=in_channels,
                num_classes=num_classes,
            ).images_per_s
            for arch in archs
        }
        teacher = build_model(
            teacher_arch, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        ).eval()
        teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = torch.randn(batch_size, in_channels, image_size, image_size)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            teacher(x)
            start, images = time.perf_counter(), 0
            while images == 0 or time.perf_counter() - start < seconds:
                teacher(x)
                images += batch_size
        forward = images / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return Rates(train=train, teacher_forward=forward)


def machine() -> str:
    """The CPU the rates are measured on, as the plan names it."""
    return describe_device(torch.device("cpu")).split(",")[0] + ")"


def plan_record(planned: list[PlannedEntry], *, cores: int) -> PlanRecord:
    """The plan to save beside the zoo (export/zoo_plan_record.py), measured now."""
    return PlanRecord(
        measured_at=time.time(),
        machine=machine(),
        cores=cores,
        entries={
            p.name: PlannedCost(p.epochs, p.cpu_hours, p.conditional, p.images) for p in planned
        },
    )


def format_plan(
    planned: list[PlannedEntry],
    rates: Rates,
    *,
    config_file: Path,
    train_images: int,
    cores: int,
) -> str:
    """The plan as a table, with totals and the least wall time on ``cores`` cores."""
    cpu = machine()
    lines = [
        f"zoo plan: {config_file} ({train_images:,} training images)",
        f"rates measured on {cpu}, one thread, img/s: "
        + ", ".join(f"{a} {r:,.1f}" for a, r in rates.train.items())
        + f"; teacher forward {rates.teacher_forward:,.1f}",
        "CPU time in h:mm of one core; 'logits': of which computing the teacher's logits",
        f"{'entry':<42}{'method':>18}{'epochs':>8}{'CPU':>8}{'logits':>8}",
    ]
    for p in planned:
        logits = hm(p.teacher_logit_hours) if p.teacher_logit_hours else "-"
        method = f"{p.method} (if due)" if p.conditional else p.method
        lines.append(f"{p.name:<42}{method:>18}{p.epochs:>8g}{hm(p.cpu_hours):>8}{logits:>8}")
    teacher, students = planned[0].cpu_hours, sum(p.cpu_hours for p in planned[1:])
    optional = sum(p.cpu_hours for p in planned if p.conditional)
    # Lanes keep every core busy (an entry left alone is raised to every core, export/lanes.py),
    # so no schedule beats the CPU time spread over the cores.
    low, high = (teacher + students - optional) / cores, (teacher + students) / cores
    span = hm(high) if low == high else f"{hm(low)} to {hm(high)} (the range: second seeds)"
    lines += [
        f"total {hm(teacher + students)} of CPU "
        f"(teacher {hm(teacher)}, students {hm(students)}"
        + (f", of which {hm(optional)} of second seeds, each only if due" if optional else "")
        + ")",
        f"wall time, at least: {span}: the CPU time over {cores} cores, as if threads scaled "
        "perfectly; more when they do not or other work shares the cores",
    ]
    return "\n".join(lines)
