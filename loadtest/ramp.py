"""Routing under load: ramp closed-loop clients at a fixed latency budget, record who served.

    python -m loadtest.ramp --model-repository models --latency-budget-ms 10
    python -m loadtest.ramp --url http://127.0.0.1:8000 --latency-budget-ms 10 --concurrency 1,2,4
    python -m loadtest.ramp --model-repository DIR --latency-budget-ms 10 --quick   # seconds

Every request is ``POST /predict?latency_budget_ms=B`` with one real image and no model name, so
the service's router picks the model. After an unrecorded warm-up at the first level, each step
runs ``concurrency`` closed-loop clients for ``--step-seconds`` and records requests/s, p50/p99,
the share of the answers each model served (``routing.chosen``), the mean top-1 served (the
answers' ``routing.accuracy``, from the cards) and the 422s (no model meets the budget). Writes
``ramp.md``, ``ramp.csv``, ``ramp.json`` and ``ramp.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.cli import CommandError, http_url, non_negative_float, positive_float, run_cli
from loadtest.machine import load_average, machine_description
from loadtest.payloads import images_for
from loadtest.ramp_load import Candidate, RampStep, candidates_from, routed_requests, run_step
from loadtest.ramp_load import summarize as summarize_step
from loadtest.ramp_plot import plot_ramp
from loadtest.ramp_report import (
    csv_rows,
    headline,
    markdown_table,
    report,
    share_columns,
    write_csv,
    write_json,
)
from loadtest.server import ServiceStartError, start_service

FULL_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
QUICK_CONCURRENCY = (1, 2)


class RampError(CommandError):
    """A user-facing failure of the ramp (service did not start, nothing to route to)."""


@contextmanager
def target(args: argparse.Namespace) -> Iterator[str]:
    """The URL to load: the given ``--url``, or a service started on 127.0.0.1 for the ramp."""
    if args.url:
        yield args.url.rstrip("/")
        return
    env = {"ROCKETSERVE_LOG_LEVEL": "warning"}
    try:
        with start_service(args.model_repository, args.out / "service.log", env) as svc:
            yield svc.url
    except ServiceStartError as exc:
        raise RampError(str(exc)) from None


def router_view(client: httpx.Client, family: str | None) -> list[Candidate]:
    """The router's candidates as GET /models describes them now."""
    resp = client.get("/models")
    resp.raise_for_status()
    return candidates_from(resp.json(), family)


def predicted_p99(client: httpx.Client) -> dict[str, Any]:
    """Each version's predicted p99 and its source (live, queued work or measured at load), from
    /models."""
    out: dict[str, Any] = {}
    for entry in client.get("/models").json().get("models", []):
        for version in entry.get("versions") or []:
            out[f"{entry['name']}:{version['version']}"] = version.get("routing")
    return out


@dataclass
class RampRun:
    """What a ramp saw: the candidates, the unrecorded warm-up, the steps, and what the router
    predicted for each model at the end of each step (GET /models)."""

    candidates: list[Candidate]
    warmup: RampStep
    steps: list[RampStep]
    router: list[dict[str, Any]]


def ramp(args: argparse.Namespace, url: str) -> RampRun:
    """Warm up at the first level, then run every step."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        candidates = router_view(client, args.family)
        datasets = sorted({c.model.dataset for c in candidates})
        if len(datasets) > 1:
            raise RampError(f"models of several data sets ({', '.join(datasets)}): give --family")
        models = {c.model.name: c.model for c in candidates}
        requests = routed_requests(
            url, images_for(candidates[0].model), args.latency_budget_ms, args.family
        )
        print(f"{len(candidates)} candidate(s), most accurate first:", flush=True)
        for c in candidates:
            print(f"  {c.key}  top-1 {c.accuracy * 100:.2f} %", flush=True)
        budget, first = args.latency_budget_ms, args.concurrency[0]
        warm = asyncio.run(run_step(url, requests, models, first, args.warmup_seconds))
        warmed = summarize_step(warm, first, args.warmup_seconds, budget)
        print(f"warm-up (not recorded): {_progress(warmed)}", flush=True)
        steps, router = [], []
        for c in args.concurrency:
            stats = asyncio.run(run_step(url, requests, models, c, args.step_seconds))
            step = summarize_step(stats, c, args.step_seconds, budget)
            steps.append(step)
            router.append(predicted_p99(client))
            print(_progress(step), flush=True)
            if step.first_error:
                print(f"  first error: {step.first_error}", flush=True)
    return RampRun(candidates, warmed, steps, router)


def _progress(s: RampStep) -> str:
    shares = ", ".join(f"{k} {v * 100:.0f} %" for k, v in s.shares.items()) or "-"
    return (
        f"c={s.concurrency:<4} ok={s.ok:<6} 422={s.unmet:<6} err={s.errors:<4} "
        f"{s.throughput_rps:8.1f} req/s p50={s.p50_ms:.2f}ms p99={s.p99_ms:.2f}ms "
        f"(service p99={s.service_p99_ms:.2f}ms) "
        f"mean top-1={s.mean_accuracy * 100:.2f} % [{shares}]"
    )


def write_outputs(args: argparse.Namespace, run: RampRun, context: dict[str, Any]) -> list[Path]:
    """Print the table and its headline; write ramp.md, ramp.csv, ramp.json and ramp.png."""
    budget, machine = args.latency_budget_ms, context["machine"]
    table = markdown_table(run.steps, budget)
    summary = headline(run.steps, run.candidates, budget)
    print("\n".join([*table, summary]))
    data = report(run.steps, run.candidates, budget, context)
    data["warmup"] = asdict(run.warmup)
    for step, seen in zip(data["steps"], run.router, strict=True):
        step["router_after_step"] = seen
    note = (
        f"`{context['command']}`\n\nmachine: {machine}; load average "
        f"{context['load_average_start']} at the start, {context['load_average_end']} at the end"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = args.out / "ramp.md"
    markdown.write_text("\n\n".join([note, "\n".join(table), summary]) + "\n", encoding="utf-8")
    models = share_columns(run.steps, run.candidates)
    return [
        markdown,
        write_csv(csv_rows(run.steps, run.candidates, budget, machine), args.out / "ramp.csv"),
        write_json(data, args.out / "ramp.json"),
        plot_ramp(run.steps, models, budget, args.out / "ramp.png", machine),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shortens the steps for tests."""
    p = argparse.ArgumentParser(prog="python -m loadtest.ramp", description=__doc__.splitlines()[0])
    where = p.add_argument_group("target (one of them)")
    where.add_argument("--model-repository", type=Path, help="start the service on this repo")
    where.add_argument(
        "--url", type=http_url, help="load a running service instead of starting one"
    )
    p.add_argument(
        "--latency-budget-ms",
        type=positive_float,
        required=True,
        help="objective of every request",
    )
    p.add_argument("--family", help="route only among models of this data set")
    p.add_argument("--concurrency", help="comma-separated clients per step (default 1,2,...,64)")
    p.add_argument(
        "--step-seconds", type=positive_float, default=10.0, help="measured seconds per step"
    )
    p.add_argument(
        "--warmup-seconds", type=non_negative_float, default=3.0, help="unrecorded, first level"
    )
    p.add_argument("--out", type=Path, default=Path("ramp-out"))
    p.add_argument("--quick", action="store_true", help="c=1,2, 0.5 s steps (for tests)")
    args = p.parse_args(argv)
    if bool(args.model_repository) == bool(args.url):
        p.error("give --model-repository DIR (start the service) or --url URL, not both")
    if args.model_repository and not args.model_repository.is_dir():
        p.error(f"--model-repository {args.model_repository}: not a folder")
    default = QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY
    try:
        levels = [int(c) for c in (args.concurrency or "").split(",") if c.strip()]
        if min(levels or default) < 1:
            raise ValueError
    except ValueError:
        p.error("--concurrency needs positive integers, e.g. 1,2,4")
    args.concurrency = levels or list(default)
    if args.quick:
        args.step_seconds, args.warmup_seconds = 0.5, 0.3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m loadtest.ramp``."""
    args = parse_args(argv)
    machine = machine_description()
    load_start = load_average()
    print(
        f"machine: {machine}; load average {load_start} (other processes share these cores)",
        flush=True,
    )
    try:
        with target(args) as url:
            run = ramp(args, url)
    except (RampError, httpx.HTTPError, OSError, ValueError) as exc:
        print(f"ramp: error: {exc}", file=sys.stderr)
        return 2
    context = {
        "command": "python -m loadtest.ramp " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "target": args.url or str(args.model_repository),
    }
    print(f"load average at the end: {context['load_average_end']}")
    written = write_outputs(args, run, context)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
