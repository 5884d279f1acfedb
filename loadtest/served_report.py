"""served_vs_raw's results: its rows, the Markdown table and the verdicts on issue #14's targets."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from loadtest.raw import RawCeiling
from service.contract.machine import cpu_model_name
from service.contract.model_card import ModelCard, model_dirs, read_manifest


@dataclass
class Row:
    """One measured configuration."""

    label: str
    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float | None = None
    errors: int = 0


def machine() -> str:
    """A one-line description of this machine."""
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu_model_name()}, {os.cpu_count()} logical CPUs, {system}"


@dataclass(frozen=True)
class Targets:
    """Issue #14's targets for one model: served/raw at c=64 and the c=1 p50 gap over raw."""

    role: str
    min_ratio: float
    max_gap_ms: float


TEACHER_TARGETS = Targets("the largest model or a variant of it", 0.90, 1.0)
STUDENT_TARGETS = Targets("a student", 0.50, 0.5)


def targets_for(card: ModelCard, repo: Path) -> Targets:
    """The teacher's targets for the repository's largest model (most MACs) and its variants,
    the students' for every other model."""
    cards = [read_manifest(d) for d in model_dirs(repo)]
    largest = max(cards, key=lambda c: (c.macs, c.name))
    root = largest.derived_from or largest.name
    big = card.name == root or card.derived_from == root or card.macs >= largest.macs
    return TEACHER_TARGETS if big else STUDENT_TARGETS


def order(row: Row) -> tuple[int, int]:
    """Sort key: raw first, then batching on, then off; by concurrency within each."""
    return (["raw ORT", "batching on", "batching off"].index(row.label), row.concurrency)


def raw_rows(ceiling: RawCeiling, levels: list[int]) -> list[Row]:
    """One 'raw ORT' row per level: the best layout at that batch size (batch 1: the best lone
    caller's latencies)."""
    rows = []
    for c in levels:
        r = ceiling.at(c)
        if r is not None:
            rows.append(Row("raw ORT", c, r.images_per_s, r.p50_ms, r.p99_ms, float(c)))
    return rows


def report(
    card: ModelCard,
    threads: int | str,
    rows: list[Row],
    load: tuple[float, float] | None = None,
    provider: str = "cpu",
    best: RawCeiling | None = None,
    targets: Targets = TEACHER_TARGETS,
    processes: str | None = None,
) -> str:
    """The results as a Markdown table with the machine and a verdict on the issue's targets:
    against ``best`` (the raw best over thread layouts and batch sizes) when given, else against
    the raw rows at the same batch size."""
    lines = [
        f"model {card.name} ({card.training.architecture}, {card.macs:,} MACs/image, "
        f"input {list(card.input.shape)}), onnxruntime {ort.__version__} {provider.upper()}, "
        f"service intra-op threads {threads}"
        + (f", worker processes {processes}" if processes else ""),
        f"machine: {machine()}"
        + (f"; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after" if load else ""),
        *([best.describe()] if best else []),
        "",
        "| mode | concurrency / batch | images/s | p50 ms | p99 ms | mean batch | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mean = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        lines.append(
            f"| {r.label} | {r.concurrency} | {r.images_per_s:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {mean} | {r.errors} |"
        )
    by = {(r.label, r.concurrency): r for r in rows}
    raw1, raw64, on1, on64 = (
        by.get(("raw ORT", 1)),
        by.get(("raw ORT", 64)),
        by.get(("batching on", 1)),
        by.get(("batching on", 64)),
    )
    lines.append("")
    if best and on64:
        ips = best.best.result.images_per_s
        ratio = on64.images_per_s / ips
        verdict = "met" if ratio >= targets.min_ratio else "NOT met"
        lines.append(
            f"concurrency 64, batching on: {ratio:.1%} of the raw best ({best.best_label}, "
            f"{ips:,.0f} img/s) (target for {targets.role} >= {targets.min_ratio:.0%}: "
            f"{verdict})"
        )
    elif raw64 and on64:
        ratio = on64.images_per_s / raw64.images_per_s
        verdict = "met" if ratio >= targets.min_ratio else "NOT met"
        lines.append(
            f"concurrency 64, batching on: {ratio:.1%} of raw ORT at batch 64 "
            f"(target for {targets.role} >= {targets.min_ratio:.0%}: {verdict})"
        )
    lone = best.lone if best else None
    if lone and on1:
        gap = on1.p50_ms - lone.result.p50_ms
        verdict = "met" if gap <= targets.max_gap_ms else "NOT met"
        lines.append(
            f"concurrency 1, batching on: p50 {gap:+.2f} ms over the best lone raw batch-1 call "
            f"({lone.layout.label}, {lone.result.p50_ms:.2f} ms) (target for {targets.role} "
            f"<= +{targets.max_gap_ms:.1f} ms: {verdict})"
        )
    elif raw1 and on1:
        gap = on1.p50_ms - raw1.p50_ms
        verdict = "met" if gap <= targets.max_gap_ms else "NOT met"
        lines.append(
            f"concurrency 1, batching on: p50 {gap:+.2f} ms over raw batch-1 "
            f"(target for {targets.role} <= +{targets.max_gap_ms:.1f} ms: {verdict})"
        )
    return "\n".join(lines)
