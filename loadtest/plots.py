"""PNG plots of a bench sweep: throughput vs concurrency, p99 vs throughput, accuracy vs p99."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtest.cli import run_cli

Row = dict[str, Any]
_STYLE = {"on": "-", "off": "--", "url": "-"}


def _series(rows: Sequence[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        out.setdefault((row["model"], row["batching"]), []).append(row)
    for points in out.values():
        points.sort(key=lambda r: r["concurrency"])
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def plot_throughput(rows: Sequence[Row], path: Path, machine: str) -> Path:
    """Served requests/s against concurrency per model and batching mode, raw ORT dotted."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=80)
    colors: dict[str, Any] = {}
    for (model, batching), points in _series(rows).items():
        color = colors.setdefault(model, f"C{len(colors)}")
        xs = [r["concurrency"] for r in points]
        ax.plot(
            xs,
            [r["throughput_rps"] for r in points],
            _STYLE.get(batching, "-"),
            color=color,
            marker="o",
            ms=3,
            label=f"{model} batching {batching}",
        )
        raw = [(r["concurrency"], r["raw_images_per_s"]) for r in points]
        raw = [(x, y) for x, y in raw if _finite(y)]
        if raw and batching in ("on", "url"):
            ax.plot(*zip(*raw, strict=True), ":", color=color, label=f"{model} raw ORT")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["concurrency"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput vs concurrency\n{machine}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_p99(rows: Sequence[Row], path: Path, machine: str) -> Path:
    """p99 latency against achieved throughput, one line per model and batching mode."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=80)
    colors: dict[str, Any] = {}
    for (model, batching), points in _series(rows).items():
        color = colors.setdefault(model, f"C{len(colors)}")
        points = [r for r in points if _finite(r["p99_ms"])]
        ax.plot(
            [r["throughput_rps"] for r in points],
            [r["p99_ms"] for r in points],
            _STYLE.get(batching, "-"),
            color=color,
            marker="o",
            ms=3,
            label=f"{model} batching {batching}",
        )
        for r in points:
            ax.annotate(
                str(r["concurrency"]),
                (r["throughput_rps"], r["p99_ms"]),
                fontsize=6,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.set_yscale("log")
    ax.set_xlabel("served images / s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"p99 vs throughput (labels: concurrency)\n{machine}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_accuracy(rows: Sequence[Row], path: Path, machine: str) -> Path:
    """Offline top-1 accuracy against served p99, at the lowest and highest concurrency."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=80)
    batched = [r for r in rows if r["batching"] in ("on", "url") and _finite(r["top1"])]
    for i, model in enumerate(sorted({r["model"] for r in batched})):
        points = sorted((r for r in batched if r["model"] == model), key=lambda r: r["concurrency"])
        ends = [points[0], points[-1]] if len(points) > 1 else points
        ax.plot(
            [r["p99_ms"] for r in ends],
            [r["top1"] for r in ends],
            "-o",
            color=f"C{i}",
            ms=4,
            label=model,
        )
        for r in ends:
            ax.annotate(
                f"c={r['concurrency']}",
                (r["p99_ms"], r["top1"]),
                fontsize=6,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("served p99 latency (ms), batching on")
    ax.set_ylabel("top-1 accuracy (model card)")
    ax.set_title(f"Accuracy vs p99 per model\n{machine}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(rows: Sequence[Row], out: Path, machine: str) -> list[Path]:
    """Write the three plots into ``out``; returns their paths."""
    return [
        plot_throughput(rows, out / "throughput_vs_concurrency.png", machine),
        plot_p99(rows, out / "p99_vs_throughput.png", machine),
        plot_accuracy(rows, out / "accuracy_vs_p99.png", machine),
    ]


def read_rows(paths: Sequence[Path]) -> list[Row]:
    """Rows of bench CSV files, numbers parsed back (NaN for empty figures)."""
    rows: list[Row] = []
    for path in paths:
        with path.open(newline="") as fh:
            for raw in csv.DictReader(fh):
                row: Row = dict(raw)
                for key, value in raw.items():
                    if key in _TEXT_FIELDS:
                        continue
                    number = float(value) if value not in ("", "nan", "-") else float("nan")
                    row[key] = int(number) if key in _INT_FIELDS else number
                rows.append(row)
    return rows


_TEXT_FIELDS = {"model", "batching", "payload", "client", "machine", "raw_best_layout"}
_INT_FIELDS = {"version", "concurrency", "ok", "errors", "raw_batch_size"}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.plots OUT_DIR BENCH.csv [...]``: redraw the plots of merged runs."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.plots", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("csv", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.csv)
    except (OSError, ValueError, KeyError) as exc:
        print(f"plots: error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("plots: error: no rows in the CSV files", file=sys.stderr)
        return 2
    machines = sorted({str(r.get("machine", "")) for r in rows})
    for path in plot_all(rows, args.out, "; ".join(machines)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
