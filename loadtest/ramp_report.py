"""The ramp's results as a Markdown table, a CSV (one row per step) and a JSON report."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.ramp_load import Candidate, RampStep

CSV_FIELDS = (
    "concurrency",
    "duration_s",
    "requests",
    "ok",
    "unmet_422",
    "errors",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "service_p99_ms",
    "latency_budget_ms",
    "within_budget",
    "mean_top1_served",
)


def _ms(x: float, digits: int = 2) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _verdict(step: RampStep) -> str:
    return {None: "-", True: "yes", False: "no"}[step.within_budget]


def share_list(step: RampStep) -> str:
    """The step's answers per chosen model, largest first: ``name:1 62 %, name:1 38 %``."""
    if not step.shares:
        return "-"
    return ", ".join(f"{key} {share * 100:.0f} %" for key, share in step.shares.items())


def markdown_table(steps: Sequence[RampStep], budget_ms: float) -> list[str]:
    """One Markdown line per step, after the header."""
    lines = [
        f"| concurrency | req/s | p50 ms | p99 ms | p99 within {budget_ms:g} ms | service p99 ms "
        "| mean top-1 served | 422 (no model meets) | errors | share of the answers |",
        "|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        accuracy = "-" if math.isnan(s.mean_accuracy) else f"{s.mean_accuracy * 100:.2f} %"
        unmet = f"{s.unmet} ({s.unmet / s.requests * 100:.0f} %)" if s.unmet else "0"
        lines.append(
            f"| {s.concurrency} | {s.throughput_rps:,.0f} | {_ms(s.p50_ms)} | {_ms(s.p99_ms)} "
            f"| {_verdict(s)} | {_ms(s.service_p99_ms)} | {accuracy} | {unmet} | {s.errors} "
            f"| {share_list(s)} |"
        )
    return lines


def share_columns(steps: Sequence[RampStep], candidates: Sequence[Candidate]) -> list[str]:
    """Every candidate (most accurate first), then any other model an answer named."""
    keys = [c.key for c in candidates]
    for step in steps:
        keys += [k for k in step.shares if k not in keys]
    return keys


def csv_rows(
    steps: Sequence[RampStep], candidates: Sequence[Candidate], budget_ms: float, machine: str
) -> list[dict[str, Any]]:
    """One CSV row per step: the figures, then ``share:<model>`` (0..1) per model."""
    keys = share_columns(steps, candidates)
    rows = []
    for s in steps:
        row: dict[str, Any] = {
            "concurrency": s.concurrency,
            "duration_s": s.duration_s,
            "requests": s.requests,
            "ok": s.ok,
            "unmet_422": s.unmet,
            "errors": s.errors,
            "throughput_rps": s.throughput_rps,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "service_p99_ms": s.service_p99_ms,
            "latency_budget_ms": budget_ms,
            "within_budget": _verdict(s),
            "mean_top1_served": s.mean_accuracy,
        }
        row.update({f"share:{k}": s.shares.get(k, 0.0) for k in keys})
        rows.append({**row, "machine": machine})
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write the rows (floats to 6 significant digits, ``nan`` for none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else list(CSV_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def report(
    steps: Sequence[RampStep],
    candidates: Sequence[Candidate],
    budget_ms: float,
    context: dict[str, Any],
) -> dict[str, Any]:
    """Everything the ramp measured, for ``ramp.json``: ``context`` (machine, load, target),
    the candidates with their card accuracy, and every step."""
    return {
        **context,
        "latency_budget_ms": budget_ms,
        "candidates": [{"model": c.key, "accuracy": c.accuracy} for c in candidates],
        "steps": [{**asdict(s), "requests": s.requests} for s in steps],
    }


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write the report (NaN as null, so that any JSON reader takes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n", encoding="utf-8")
    return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def headline(steps: Sequence[RampStep], candidates: Sequence[Candidate], budget_ms: float) -> str:
    """One line: at how many steps p99 held, and how the most accurate model's share moved."""
    judged = [s for s in steps if s.within_budget is not None]
    held = sum(1 for s in judged if s.within_budget)
    best = candidates[0].key
    moves = " -> ".join(f"{s.shares.get(best, 0.0) * 100:.0f} %" for s in steps)
    served = " -> ".join(
        "-" if math.isnan(s.mean_accuracy) else f"{s.mean_accuracy * 100:.2f} %" for s in steps
    )
    return (
        f"p99 within {budget_ms:g} ms at {held} of {len(judged)} step(s) with answers; "
        f"share of {best}: {moves}; mean top-1 served: {served}"
    )
