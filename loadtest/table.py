"""Print a bench CSV as a markdown table (docs/performance.md): ``python -m loadtest.table CSV``."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from loadtest.cli import fail, run_cli

HEADER = (
    "| model (top-1) | batching | concurrency | served img/s | p50 ms | p99 ms | mean batch "
    "| raw ORT img/s (at batch) | served/raw | service CPU ms/req |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)
COLUMNS = (
    "model",
    "batching",
    "concurrency",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "mean_batch",
    "raw_images_per_s",
    "raw_batch_size",
    "served_over_raw",
    "server_cpu_ms_per_req",
)


def markdown_rows(rows: Sequence[dict[str, str]], levels: set[int] | None = None) -> list[str]:
    """One markdown line per CSV row (model, batching off before on, by concurrency)."""
    order = {"off": 0, "on": 1}
    picked = [r for r in rows if levels is None or int(r["concurrency"]) in levels]
    picked.sort(key=lambda r: (r["model"], order.get(r["batching"], 2), int(r["concurrency"])))
    lines = []
    for r in picked:
        top1 = f"{float(r['top1']) * 100:.1f} %" if r.get("top1") else "n/a"
        lines.append(
            f"| {r['model']} ({top1}) | {r['batching']} | {int(r['concurrency'])} "
            f"| {float(r['throughput_rps']):,.0f} | {float(r['p50_ms']):.2f} "
            f"| {float(r['p99_ms']):.1f} | {float(r['mean_batch']):.1f} "
            f"| {float(r['raw_images_per_s']):,.0f} ({int(float(r['raw_batch_size']))}) "
            f"| {float(r['served_over_raw']) * 100:.1f} % "
            f"| {float(r['server_cpu_ms_per_req']):.2f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the markdown table of a bench CSV, optionally only some concurrency levels."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.table", description=main.__doc__)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--concurrency", default="", help="comma-separated levels (default: all)")
    args = parser.parse_args(argv)
    try:
        with args.csv.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
    except OSError as exc:
        return fail(f"cannot read {args.csv}: {exc.strerror}")
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        return fail(f"{args.csv}: not a bench CSV (no column {', '.join(missing)})")
    levels = {int(c) for c in args.concurrency.split(",") if c.strip()} or None
    lines = markdown_rows(rows, levels)
    if not lines:
        at = "" if levels is None else f" at concurrency {args.concurrency}"
        return fail(f"{args.csv}: no rows{at}")
    print(HEADER)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
