"""REPORT.md (models by latency, studies), pareto.png (accuracy vs latency) and curves.png."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from export.comparisons import (
    points_below,
    render_ablation,
    render_depth,
    render_int8,
    render_methods,
    render_mobilenet,
)
from export.convergence import CURVES_FILENAME, plot_curves, render_convergence, span_union_s
from export.devices import device_spans
from export.pareto import latency_ms, pareto_front
from export.pareto_plot import plot_pareto
from export.targets import render_targets
from export.zoo_progress import progress_of
from service.contract.model_card import ModelCard, ProfileRow

REPORT_FILENAME = "REPORT.md"
PARETO_FILENAME = "pareto.png"


def _row(card: ModelCard, batch_size: int) -> ProfileRow | None:
    return card.profile.row(batch_size)


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _ms(row: ProfileRow | None, attr: str) -> str:
    return "n/a" if row is None else f"{getattr(row, attr):.3f}"


def render_report(
    cards: Sequence[ModelCard],
    title: str,
    served: Collection[str] | None = None,
    progress: tuple[str, list[str]] | None = None,
) -> str:
    """Markdown: the machine, then one table row per model sorted by batch-1 latency.

    ``served``: when the cards are a whole zoo and the repository serves some of them, their
    names; the table then says which are served. ``progress``: how far the zoo is from its
    config (``export.zoo_progress``), a header line and the section of what is not trained yet.
    """
    ordered = sorted(cards, key=latency_ms)
    front = pareto_front(cards)
    machines = sorted({c.profile.machine for c in cards})
    setups = sorted({f"{c.profile.provider}, {c.profile.threads} thread(s)" for c in cards})
    lines = [
        f"# {title}",
        "",
        "Every figure below was measured with ONNX Runtime on the ONNX file that is served."
        if served is None
        else "Every figure below was measured with ONNX Runtime on the exported ONNX file of "
        "each model. This repository serves the models marked ✓ (their cards and files are "
        "here); the others were trained by the same zoo and are reported for comparison.",
        "",
        f"- Machine: {'; '.join(machines)}",
        f"- ONNX Runtime: {'; '.join(setups)}; {cards[0].metrics.measured_with}"
        if cards
        else "- ONNX Runtime: n/a",
        f"- Accuracy: full `{cards[0].metrics.split}` split of `{cards[0].metrics.dataset}` "
        f"({cards[0].metrics.n} images), preprocessed only as each card says"
        if cards
        else "- Accuracy: n/a",
        _latency_line(cards),
        "- Pareto: ★ marks models that no other model beats on both top-1 and batch-1 latency; "
        "models of one architecture, precision and size count as equally fast (their median), "
        "so of those only the most accurate can be marked.",
        *([progress[0]] if progress else []),
        "",
        "| model | precision | top-1 % | top-5 % | p50 ms b1 | p99 ms b1 | img/s b32 "
        "| params | MACs | size | method | architecture | teacher | pareto |"
        + (" served |" if served is not None else ""),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|:-:|"
        + (":-:|" if served is not None else ""),
    ]
    for card in ordered:
        b1, b32 = _row(card, 1), _row(card, 32)
        top5 = "n/a" if card.metrics.top5 is None else f"{card.metrics.top5 * 100:.2f}"
        lines.append(
            f"| {card.name} | {card.precision} | {card.metrics.top1 * 100:.2f} | {top5} "
            f"| {_ms(b1, 'p50_ms')} | {_ms(b1, 'p99_ms')} "
            f"| {'n/a' if b32 is None else f'{b32.images_per_s:.0f}'} "
            f"| {_human(card.params)} | {_human(card.macs)} | {_size(card.size_bytes)} "
            f"| {card.training.method} | {card.training.architecture} "
            f"| {card.training.teacher or '-'} | {'★' if card.name in front else ''} |"
            + ("" if served is None else f" {'✓' if card.name in served else ''} |")
        )
    lines += ["", f"![accuracy against latency]({PARETO_FILENAME})", ""]
    lines += progress[1] if progress else []
    lines += render_training(cards)
    lines += render_convergence(cards)
    lines += render_students(cards)
    teacher = find_teacher(cards)
    lines += render_targets(cards, teacher)
    lines += render_methods(cards, teacher)
    lines += render_ablation(cards)
    lines += render_depth(cards)
    lines += render_mobilenet(cards)
    lines += render_int8(cards)
    return "\n".join(lines)


@dataclass(frozen=True)
class TrainingFigures:
    """How long a repository's trained networks took, and on what (the report's Training)."""

    networks: int
    devices: tuple[str, ...]  # each device once, sorted; a letter each when there are several
    summed_minutes: int  # every network's wall time, added up
    elapsed_minutes: int | None  # the union of their epochs; None when no epoch has times
    elapsed_by_device: tuple[int, ...]  # minutes, one per device, when there are several; else ()
    untimed: int  # networks without epoch times, left out of the elapsed time

    def letter(self, device: str) -> str:
        """The device's letter (a, b, ...) in the report."""
        return chr(ord("a") + self.devices.index(device))

    def elapsed_text(self) -> str:
        """e.g. '6 h 49 min' or '9 h 10 min (8 h 50 min on (a), 0 h 20 min on (b))'."""
        if self.elapsed_minutes is None:
            return ""
        each = ", ".join(
            f"{_hours(m)} on ({self.letter(d)})"
            for d, m in zip(self.devices, self.elapsed_by_device, strict=False)
        )
        return _hours(self.elapsed_minutes) + (f" ({each})" if each else "")

    def summed_text(self) -> str:
        """Every network's wall time added up, e.g. '9 h 49 min'."""
        return _hours(self.summed_minutes)

    def devices_text(self) -> str:
        """The devices, lettered when there are several."""
        if len(self.devices) > 1:
            return "; ".join(f"({self.letter(d)}) {d}" for d in self.devices)
        return self.devices[0] if self.devices else "n/a"


def training_figures(cards: Sequence[ModelCard]) -> TrainingFigures:
    """The figures of :func:`render_training` for the trained networks among ``cards``."""
    trained = [c for c in cards if c.derived_from is None]
    devices = sorted({d for c in trained for d, _ in device_spans(c.training.device or "")})
    elapsed_s, untimed = elapsed_training_s(trained)
    mixed = len(devices) > 1
    return TrainingFigures(
        networks=len(trained),
        devices=tuple(devices),
        summed_minutes=round(sum(c.training.wall_time_s for c in trained) / 60),
        elapsed_minutes=round(elapsed_s / 60) if untimed < len(trained) else None,
        elapsed_by_device=tuple(
            round(elapsed_training_s(trained, d)[0] / 60) for d in devices if mixed
        ),
        untimed=untimed,
    )


def render_training(cards: Sequence[ModelCard]) -> list[str]:
    """How each trained network was made: method, epochs, wall time, device and recipe."""
    trained = sorted((c for c in cards if c.derived_from is None), key=lambda c: c.name)
    if not trained:
        return []
    figures = training_figures(trained)
    mixed = len(figures.devices) > 1
    lines = [
        "## Training",
        "",
        f"Trained on: {figures.devices_text()}. Variants (int8, fp16) are converted from "
        "these networks after training, not trained.",
        "",
        "| model | method | architecture | epochs | wall time | recipe |" + " device |" * mixed,
        "|---|---|---|--:|--:|---|" + "---|" * mixed,
    ]
    for c in trained:
        t = c.training
        spans = device_spans(t.device or "")
        where = ", ".join(f"{figures.letter(d)}{f' {e}' if e else ''}" for d, e in spans)
        lines.append(
            f"| {c.name} | {t.method} | {t.architecture} | {t.epochs:g} "
            f"| {t.wall_time_s / 60:.1f} min | {t.recipe or '-'} |" + f" {where} |" * mixed
        )
    these = "this network" if len(trained) == 1 else f"these {len(trained)} networks"
    lines += [
        "",
        f"Training time of {these}, summed: {figures.summed_text()} of wall "
        "time (networks that a zoo trains in parallel lanes overlap, so a zoo takes less than "
        "this sum).",
    ]
    if figures.elapsed_minutes is not None:
        untimed = figures.untimed
        left_out = f"; {untimed} network(s) without epoch times are left out" if untimed else ""
        lines += [
            "",
            f"Elapsed training time: {figures.elapsed_text()}, the union of "
            "every network's epochs (each epoch the span of its training time that ends when it "
            "finished, from the cards' learning curves), so networks trained side by side count "
            f"once{left_out}.",
        ]
    return [*lines, ""]


def _hours(minutes: int) -> str:
    return f"{minutes // 60} h {minutes % 60:02d} min"


def epoch_device(card: ModelCard, epoch: int, runs: list[tuple[str, str]] | None = None) -> str:
    """The device that trained ``epoch`` of ``card`` (its training device names epoch ranges
    when the run moved between devices); ``runs``: its :func:`device_spans`, if already read."""
    runs = device_spans(card.training.device or "") if runs is None else runs
    for device, epochs in runs:
        first, _, last = epochs.partition("-")
        if not epochs or int(first) <= epoch <= int(last or first):
            return device
    return runs[-1][0] if runs else ""


def elapsed_training_s(
    trained: Sequence[ModelCard], device: str | None = None
) -> tuple[float, int]:
    """Seconds during which any of ``trained`` was training, each epoch taken as the span of its
    training time ending when it finished; and how many networks lack epoch times (left out).
    With ``device``, only the epochs trained there."""
    spans: list[tuple[float, float]] = []
    untimed = 0
    for card in trained:
        records = card.training.history
        if device is not None:  # the card's device text read once, not once an epoch
            runs = device_spans(card.training.device or "")
            records = tuple(r for r in records if epoch_device(card, r.epoch, runs) == device)
        timed = [(r.finished_at - r.epoch_time_s, r.finished_at) for r in records if r.finished_at]
        if not records or len(timed) < len(records):
            untimed += 1
            continue
        spans += timed
    return span_union_s(spans), untimed


def find_teacher(cards: Sequence[ModelCard]) -> ModelCard | None:
    """The model other models name as their teacher (the most named one), if the repo has it."""
    names = {c.name for c in cards}
    named = [c.training.teacher for c in cards if c.training.teacher in names]
    if not named:
        return None
    top = max(sorted(set(named)), key=named.count)
    return next(c for c in cards if c.name == top)


def smallest_student(cards: Sequence[ModelCard], precision: str = "int8") -> ModelCard | None:
    """The student with the fewest MACs in ``precision``, neither the teacher nor a variant of
    it; of students of equal MACs (one architecture trained by several methods), the most
    accurate, the one a user would serve (then the name)."""
    big = find_teacher(cards)
    students = [
        c
        for c in cards
        if c.precision == precision and (big is None or big.name not in (c.name, c.derived_from))
    ]
    return min(students, key=lambda c: (c.macs, -c.metrics.top1, c.name), default=None)


def variant_of(cards: Sequence[ModelCard], card: ModelCard, precision: str) -> ModelCard | None:
    """``card``'s variant in ``precision`` (its int8 file, say), if the cards have it."""
    return next(
        (c for c in cards if c.derived_from == card.name and c.precision == precision), None
    )


def serving_roles(cards: Sequence[ModelCard]) -> dict[str, str]:
    """The models scripts/serving-figures.sh measures, by role: the teacher (the largest), its
    int8 variant and the smallest int8 student; a role the cards do not fill is left out."""
    roles: dict[str, str] = {}
    big = find_teacher(cards)
    if big is not None:
        roles["LARGEST"] = big.name
        heavy = variant_of(cards, big, "int8")
        if heavy is not None:
            roles["HEAVY_INT8"] = heavy.name
    small = smallest_student(cards)
    if small is not None:
        roles["SMALLEST"] = small.name
    return roles


def _b32(card: ModelCard) -> float | None:
    row = _row(card, 32)
    return row.images_per_s if row else None


def render_students(cards: Sequence[ModelCard]) -> list[str]:
    """Every student against the teacher: top-1 gap and speed-up at batch 32."""
    teacher = find_teacher(cards)
    if teacher is None or _b32(teacher) is None:
        return []
    students = [
        c for c in cards
        if c.name != teacher.name and c.derived_from != teacher.name and _b32(c) is not None
    ]  # fmt: skip
    if not students:
        return []
    t32 = _b32(teacher) or 1.0
    best = max(students, key=lambda c: (c.metrics.top1, _b32(c) or 0.0))
    lines = [
        "## Students against the teacher",
        "",
        f"Teacher: **{teacher.name}** ({teacher.training.architecture}), top-1 "
        f"{teacher.metrics.top1 * 100:.2f} %, {t32:.0f} img/s at batch 32. Speed-up = the "
        "student's images/s at batch 32 over the teacher's, both measured above on this machine. "
        "Agreement = the share of the test split on which the student's top-1 equals its "
        "teacher's (measured on the served files; the baseline of the service's live agreement).",
        "",
        "| student | precision | top-1 % | gap to teacher (points) | agreement with teacher % "
        "| speed-up b32 | MACs ratio |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for c in sorted(students, key=lambda c: -c.metrics.top1):
        gap = (teacher.metrics.top1 - c.metrics.top1) * 100
        agreement = c.metrics.teacher_agreement
        agree = f"{agreement * 100:.2f}" if agreement is not None else "-"
        lines.append(
            f"| {c.name} | {c.precision} | {c.metrics.top1 * 100:.2f} | {gap:+.2f} | {agree} "
            f"| {(_b32(c) or 0.0) / t32:.1f}x | {teacher.macs / max(c.macs, 1):.1f}x |"
        )
    gap = (teacher.metrics.top1 - best.metrics.top1) * 100
    lines += [
        "",
        f"Best student: **{best.name}**, {(_b32(best) or 0.0) / t32:.1f}x the teacher's "
        f"throughput at batch 32, {points_below(gap)} the teacher's top-1.",
        "",
    ]
    return lines


def write_report(
    repo: Path, cards: Sequence[ModelCard], title: str, served: Collection[str] | None = None
) -> tuple[Path, Path]:
    """Write ``repo/REPORT.md``, ``repo/pareto.png`` and, when the cards carry learning curves,
    ``repo/curves.png``; returns the first two paths. When ``repo`` records the zoo config it was
    built from, the report says which of its networks are not trained yet."""
    if not cards:
        raise ValueError(f"{repo}: no models to report on")
    report = repo / REPORT_FILENAME
    progress = progress_of(repo, cards)
    report.write_text(render_report(cards, title, served, progress), encoding="utf-8")
    plot_curves(cards, repo / CURVES_FILENAME, title)
    return report, plot_pareto(cards, repo / PARETO_FILENAME, title)


def _latency_line(cards: Sequence[ModelCard]) -> str:
    """How the latency figures were taken: one run per model, or the median of interleaved
    rounds (`export evaluate --rounds`)."""
    line = "- Latency: p50/p99 over repeated runs at batch 1; throughput = images/s at batch 32"
    rounds = sorted({c.profile.rounds for c in cards})
    if rounds == [1] or not rounds:
        return line + "."
    said = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    return (
        f"{line}; each figure is the median of {said} interleaved rounds (every model measured "
        "once per round), so that the machine's drift falls on all alike."
    )
