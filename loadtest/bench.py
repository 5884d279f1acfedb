"""Serving benchmark: sweep concurrency per model, batching off and on, against raw ONNX Runtime.

    python -m loadtest.bench --model-repository models/digits --out bench-out
    python -m loadtest.bench --url http://127.0.0.1:8000 [--model-repository DIR for the ceiling]
    python -m loadtest.bench --model-repository DIR --quick          # seconds, for tests
    python -m loadtest.bench --model-repository DIR --overload       # ~4x capacity for 60 s

Writes ``bench.csv`` and three PNG plots into ``--out``, prints the table and served/raw ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from loadtest.cli import (
    CommandError,
    http_url,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
)
from loadtest.machine import machine_description
from loadtest.payloads import ModelInfo, images_for, parse_models
from loadtest.plots import plot_all
from loadtest.profiling import ProfilerMissing, report, start_recording
from loadtest.raw import RawCeiling, raw_ceiling
from loadtest.server import ServiceStartError, start_service
from loadtest.sweep import run_point

FULL_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128)
QUICK_CONCURRENCY = (1, 4)
CSV_FIELDS = (
    "model",
    "version",
    "top1",
    "batching",
    "payload",
    "client",
    "concurrency",
    "ok",
    "errors",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "service_p50_ms",
    "mean_batch",
    "raw_batch_size",
    "raw_images_per_s",
    "raw_p50_ms",
    "raw_p50_paused_ms",
    "served_over_raw",
    "raw_best_images_per_s",
    "raw_best_layout",
    "served_over_best",
    "server_cpu_ms_per_req",
    "client_cpu_ms_per_req",
    "machine",
)


class BenchError(CommandError):
    """A user-facing failure of the bench (bad arguments, service did not start)."""


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def service_env(args: argparse.Namespace, batching: bool) -> dict[str, str]:
    """ROCKETSERVE_* settings of a service started by the bench."""
    per_request = min(32, args.max_batch_size)
    extra = (
        {} if args.max_in_flight is None else {"ROCKETSERVE_MAX_IN_FLIGHT": str(args.max_in_flight)}
    )
    return {
        **extra,
        "ROCKETSERVE_BATCHING": "true" if batching else "false",
        "ROCKETSERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "ROCKETSERVE_MAX_INPUTS_PER_REQUEST": str(per_request),
        "ROCKETSERVE_MAX_QUEUE_SIZE": str(max(1024, 4 * max(args.concurrency))),
        "ROCKETSERVE_INTRA_OP_THREADS": str(args.ort_threads),
        "ROCKETSERVE_WORKERS": str(args.workers),
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }


def discover_models(url: str, wanted: Sequence[str]) -> list[ModelInfo]:
    """Models served at ``url`` (GET /models), filtered to ``wanted`` when given."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        resp = client.get("/models")
        resp.raise_for_status()
        models = parse_models(resp.json())
    if wanted:
        missing = sorted(set(wanted) - {m.name for m in models})
        if missing:
            raise BenchError(f"model(s) not served: {', '.join(missing)}")
        models = [m for m in models if m.name in wanted]
    return models


@contextmanager
def target(
    args: argparse.Namespace, batching: bool, label: str
) -> Iterator[tuple[str, int | None]]:
    """(url, server pid or None): a service started for this mode, or the given ``--url``."""
    if args.url:
        yield args.url.rstrip("/"), None
        return
    log = args.out / f"service-{label}.log"
    try:
        with start_service(args.model_repository, log, service_env(args, batching)) as svc:
            yield svc.url, svc.pid
    except ServiceStartError as exc:
        raise BenchError(str(exc)) from None


def raw_for(args: argparse.Namespace, models: Sequence[ModelInfo]) -> dict[str, RawCeiling]:
    """The raw in-process ORT ceiling per model: the best thread layout at batch 1, 8, 32 and at
    every batch size the sweep can form, ``--raw-time`` seconds per cell."""
    if args.model_repository is None:
        return {}
    sizes = sorted({1} | {min(c, args.max_batch_size) for c in args.concurrency})
    ceilings = {}
    for m in models:
        ceiling = raw_ceiling(args.model_repository / m.name, images_for(m), sizes, args.raw_time)
        print(f"{m.name}: {ceiling.describe()}", flush=True)
        ceilings[m.name] = ceiling
    return ceilings


@contextmanager
def profiled(args: argparse.Namespace, pid: int | None, stem: Path) -> Iterator[None]:
    """With ``--profile``: py-spy samples the service during the point; prints the buckets."""
    if not args.profile or pid is None:
        yield
        return
    raw = stem.parent / f"{stem.name}.collapsed.txt"  # model names may contain dots
    spy = start_recording(pid, args.warmup + args.duration, raw)
    try:
        yield
    finally:
        _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        raise BenchError(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
    lines = report(raw)
    (stem.parent / f"{stem.name}.summary.txt").write_text("\n".join(lines) + "\n")
    print("  where the service's CPU time goes (py-spy):", *lines, sep="\n    ", flush=True)


def sweep(args: argparse.Namespace, machine: str) -> list[dict[str, Any]]:
    """Run every (batching mode, model, concurrency) point and return CSV rows."""
    modes = [("url", True)] if args.url else [(m, m == "on") for m in args.batching]
    rows: list[dict[str, Any]] = []
    raw: dict[str, RawCeiling] | None = None
    for label, batching in modes:
        with target(args, batching, label) as (url, pid):
            models = discover_models(url, args.models)
            if raw is None:
                raw = raw_for(args, models)
            for model in models:
                images = images_for(model)
                for c in args.concurrency:
                    spy = f"profile-{model.name}-{label}-c{c}"
                    with profiled(args, pid, args.out / spy):
                        point = asyncio.run(
                            run_point(
                                url,
                                model,
                                images,
                                c,
                                args.duration,
                                args.warmup,
                                args.payload,
                                pid,
                                client=args.client,
                            )
                        )
                    raw_bs = min(c, args.max_batch_size) if batching else 1
                    ceiling = raw.get(model.name)
                    row = _row(model, label, args.payload, args.client, point, ceiling, raw_bs)
                    rows.append({**row, "machine": machine})
                    print(_format_row(row), flush=True)
    return rows


def _row(
    model: ModelInfo,
    batching: str,
    payload: str,
    client: str,
    point: Any,
    raw: RawCeiling | None,
    raw_bs: int,
) -> dict[str, Any]:
    ceiling = raw.at(raw_bs) if raw else None  # the best layout at the batch the service formed
    raw_ips = ceiling.images_per_s if ceiling else float("nan")
    best_ips = raw.best.result.images_per_s if raw else float("nan")
    p = asdict(point)
    p.pop("duration_s")
    first_error = p.pop("first_error")
    if first_error:
        print(f"  first error ({model.name}, c={point.concurrency}): {first_error}", flush=True)
    return {
        "model": model.name,
        "version": model.version,
        "top1": model.top1 if model.top1 is not None else float("nan"),
        "batching": batching,
        "payload": payload,
        "client": client,
        **p,
        "raw_batch_size": raw_bs,
        "raw_images_per_s": raw_ips,
        "raw_p50_ms": ceiling.p50_ms if ceiling else float("nan"),
        "raw_p50_paused_ms": ceiling.p50_paused_ms if ceiling else float("nan"),
        "served_over_raw": point.throughput_rps / raw_ips if ceiling else float("nan"),
        "raw_best_images_per_s": best_ips,
        "raw_best_layout": raw.best_label if raw else "",
        "served_over_best": point.throughput_rps / best_ips if raw else float("nan"),
    }


def _fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:<24} batching={r['batching']:<3} c={r['concurrency']:<4} "
        f"ok={r['ok']:<6} err={r['errors']:<4} {_fmt(r['throughput_rps'], 1):>8} req/s "
        f"p50={_fmt(r['p50_ms'])}ms p99={_fmt(r['p99_ms'])}ms batch={_fmt(r['mean_batch'], 1)} "
        f"raw@{r['raw_batch_size']}={_fmt(r['raw_images_per_s'], 0)} img/s "
        f"served/raw={_fmt(r['served_over_raw'], 3)} served/best={_fmt(r['served_over_best'], 3)} "
        f"cpu/req server={_fmt(r['server_cpu_ms_per_req'], 3)}ms "
        f"client={_fmt(r['client_cpu_ms_per_req'], 3)}ms"
    )


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write the sweep rows as CSV (floats to 6 significant digits, NaN for none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Headline lines: served over the raw best at the highest concurrency, and the c=1 latency
    over the best lone raw batch-1 call (back to back and after pauses)."""
    lines = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["batching"] in ("on", "url")]
        if not mine:
            continue
        # The target is at concurrency 64; otherwise the highest level swept.
        top = next((r for r in mine if r["concurrency"] == 64), None) or max(
            mine, key=lambda r: r["concurrency"]
        )
        one = min(mine, key=lambda r: r["concurrency"])
        lines.append(
            f"{model}: c={top['concurrency']} served/raw best = "
            f"{_fmt(top['served_over_best'], 3)} ({_fmt(top['throughput_rps'], 1)} vs "
            f"{_fmt(top['raw_best_images_per_s'], 1)} img/s, raw best: "
            f"{top['raw_best_layout'] or '-'}); "
            f"c={one['concurrency']} p50 {_fmt(one['p50_ms'], 3)} ms "
            f"(in the service {_fmt(one['service_p50_ms'], 3)} ms) vs raw "
            f"batch-{one['raw_batch_size']} "
            f"{_fmt(one['raw_p50_ms'], 3)} ms (+{_fmt(one['p50_ms'] - one['raw_p50_ms'], 3)} ms), "
            f"{_fmt(one['raw_p50_paused_ms'], 3)} ms after 2 ms pauses "
            f"(+{_fmt(one['p50_ms'] - one['raw_p50_paused_ms'], 3)} ms)"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shortens everything for tests."""
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__.splitlines()[0]
    )
    where = p.add_argument_group("target (one of them, or both for --url with a raw ceiling)")
    where.add_argument("--model-repository", type=Path, help="start the service on this repo")
    where.add_argument(
        "--url", type=http_url, help="bench a running service instead of starting one"
    )
    p.add_argument("--models", default="", help="comma-separated model names (default: all)")
    p.add_argument("--concurrency", default=",".join(map(str, FULL_CONCURRENCY)))
    p.add_argument("--batching", default="off,on", help="modes to sweep: off,on")
    p.add_argument("--payload", choices=("multipart", "json"), default="multipart")
    p.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="load generator: lean asyncio HTTP/1.1 (cheap) or httpx",
    )
    p.add_argument(
        "--duration", type=positive_float, default=4.0, help="measured seconds per point"
    )
    p.add_argument(
        "--warmup", type=non_negative_float, default=1.0, help="unmeasured seconds per point"
    )
    p.add_argument(
        "--raw-time",
        type=positive_float,
        default=1.0,
        help="seconds per raw (thread layout, batch size)",
    )
    p.add_argument("--max-batch-size", type=positive_int, default=32, help="service max_batch_size")
    p.add_argument(
        "--ort-threads",
        default="auto",
        help="service intra-op threads: auto (default, chosen per model) or a count; the raw "
        "ceiling searches every thread layout either way",
    )
    p.add_argument(
        "--workers", default="auto", help="service worker processes: auto (the default) or N"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="service max_in_flight (default: the service's, 128 per usable core; 0: no limit)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--quick", action="store_true", help="c=1,4, 0.5 s points (for tests)")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the service at every point (started only)"
    )
    p.add_argument("--overload", action="store_true", help="run the overload scenario instead")
    p.add_argument("--overload-seconds", type=positive_float, default=60.0)
    p.add_argument("--overload-factor", type=positive_float, default=4.0)
    p.add_argument(
        "--timeout-ms", type=positive_float, default=1000.0, help="service request timeout"
    )
    p.add_argument(
        "--queue-size", type=positive_int, default=256, help="service max_queue_size (overload)"
    )
    args = p.parse_args(argv)
    if not args.model_repository and not args.url:
        p.error("give --model-repository DIR (start the service) or --url URL")
    if args.model_repository and not args.model_repository.is_dir():
        p.error(f"--model-repository {args.model_repository}: not a folder")
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
        if not args.concurrency or min(args.concurrency) < 1:
            raise ValueError
    except ValueError:
        p.error("--concurrency needs positive integers, e.g. 1,2,4")
    args.batching = [b for b in args.batching.split(",") if b]
    if not args.batching or set(args.batching) - {"on", "off"}:
        p.error("--batching takes on, off or on,off")
    args.models = [m for m in args.models.split(",") if m]
    if args.ort_threads != "auto" and not args.ort_threads.isdecimal():
        p.error("--ort-threads takes auto or a non-negative integer")
    if args.quick:
        args.concurrency, args.duration, args.warmup = QUICK_CONCURRENCY, 0.5, 0.2
        args.raw_time = 0.1
        args.overload_seconds = min(args.overload_seconds, 3.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m loadtest.bench``."""
    args = parse_args(argv)
    machine = machine_description()
    print(f"machine: {machine}; load average {_load()} (other processes share these cores)")
    try:
        if args.overload:
            from loadtest.overload import run_overload

            report = run_overload(args, machine)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "overload.json").write_text(json.dumps(report, indent=2) + "\n")
            return 0 if report["passed"] else 1
        rows = sweep(args, machine)
    except (BenchError, ProfilerMissing, httpx.HTTPError, OSError, ValueError, RuntimeError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(f"load average at the end: {_load()}")
    csv_path = write_csv(rows, args.out / "bench.csv")
    plots = plot_all(rows, args.out, machine)
    for line in summary(rows):
        print(line)
    print(f"wrote {csv_path} and {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
