"""``python -m loadtest.router_cost``: what choosing a model by objective costs per request.

Loads a repository (default: models/, the CIFAR-10 zoo) into a registry, gives every model a live
latency window, and times ``ModelRegistry.route`` for each kind of objective, with the window's
p99 refreshed as often as traffic would refresh it. Prints microseconds per routed request and
the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.cli import positive_int, run_cli
from service.contract.machine import cpu_model_name
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.repository.routing import Objective
from service.settings import Settings

OBJECTIVES = {
    "latency": Objective(latency_budget_ms=5.0),
    "accuracy": Objective(min_accuracy=0.8),
    "latency+accuracy": Objective(latency_budget_ms=5.0, min_accuracy=0.8),
    "impossible+fallback": Objective(latency_budget_ms=0.001, fallback="cheapest"),
}


def main(argv: list[str] | None = None) -> int:
    """Time the router and print the table."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.router_cost", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument(
        "--requests", type=positive_int, default=20_000, help="timed routes per kind"
    )
    args = parser.parse_args(argv)
    settings = Settings(model_repository=args.model_repository, warmup_runs=0)  # type: ignore[call-arg]
    registry = ModelRegistry.load(settings, ServiceMetrics())
    rng = np.random.default_rng(0)
    now = time.monotonic()
    for served in registry.all():  # live windows, as after some traffic: ~its batch-1 time
        base_s = (served.batch1_ms + 0.5) / 1000.0
        for latency in rng.uniform(base_s, 1.5 * base_s, size=256):
            served.window.add(float(latency), now)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpu_model_name()}, {os.cpu_count()} logical CPUs; load average {load}")
    print(f"{len(registry.models)} models in {args.model_repository}; {args.requests} routes each")
    print(f"{'objective':<22}{'us per route':>14}")
    for kind, objective in OBJECTIVES.items():
        t0 = time.perf_counter()
        for i in range(args.requests + 1):
            served, _ = registry.route(objective)
            # Traffic keeps the windows moving (and their p99 recomputed every REFRESH requests).
            served.window.add((served.batch1_ms + 0.5) / 1000.0, time.monotonic())
            if i == 0:
                t0 = time.perf_counter()  # the first route (untimed) computes every window's p99
        elapsed = time.perf_counter() - t0
        print(f"{kind:<22}{elapsed / args.requests * 1e6:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
