"""``python -m loadtest.metrics_cost``: what one request's metric updates cost, per process mode.

A successful batch-1 request updates the service's Prometheus metrics a dozen times: in flight,
queue depth, queue wait, batch size and time, the statistics extension's phases, its status and
latency. This times those updates (the batcher's observer and the request's counters, as the
service makes them) with values kept in memory (one worker process) and in prometheus-client's
memory-mapped files (several workers), each in a process of its own, rounds interleaved. Prints
microseconds per request, the range over rounds, and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from loadtest.cli import positive_int, run_cli

MODES = ("memory", "files")


async def time_updates(requests: int) -> float:
    """Microseconds of metric updates per request, in this process's mode, on an event loop
    (where the service makes them, and where the statistics' sums are gathered between writes:
    their writes, one per FLUSH_S, are timed as one at the end)."""
    from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
    from service.repository.loading import MetricsObserver

    metrics = ServiceMetrics()
    observer = MetricsObserver(metrics, "model", "1")
    request = ModelRequestMetrics(metrics, "model", "1")
    t0 = time.perf_counter()
    for _ in range(requests):
        request.in_flight.inc()
        observer.queue_depth(1)
        observer.queue_depth(0)
        observer.batch_started([0.0002])
        observer.batch_done(1, 0.0003)
        request.in_flight.dec()
        request.succeeded(1, 0.001, (0.0002, 0.0002, 0.0003, 0.0001))
    metrics.flush()
    return (time.perf_counter() - t0) / requests * 1e6


def one_round(mode: str, requests: int) -> float:
    """``time_updates`` in a fresh process of ``mode`` (files: a folder of its own)."""
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as folder:
        if mode == "files":
            env["PROMETHEUS_MULTIPROC_DIR"] = folder
        done = subprocess.run(
            [sys.executable, "-m", "loadtest.metrics_cost", "--child", "--requests", str(requests)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    """Time both modes and print the table."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.metrics_cost", description=__doc__)
    parser.add_argument("--requests", type=positive_int, default=50_000, help="per round")
    parser.add_argument("--rounds", type=positive_int, default=5, help="per mode, interleaved")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(f"{asyncio.run(time_updates(args.requests)):.3f}")
        return 0
    from service.contract.machine import cpu_model_name

    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            results[mode].append(one_round(mode, args.requests))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpu_model_name()}, {os.cpu_count()} logical CPUs; load average {load}")
    print(f"{args.rounds} rounds of {args.requests} requests per mode, interleaved")
    print(f"{'values kept in':<16}{'us per request (median)':>25}{'range':>16}")
    for mode, runs in results.items():
        runs.sort()
        where = "memory" if mode == "memory" else "mmap files"
        median = runs[len(runs) // 2]
        print(f"{where:<16}{median:>25.1f}{f'{runs[0]:.1f}-{runs[-1]:.1f}':>16}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
