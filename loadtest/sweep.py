"""Closed-loop load: N workers, each with its own kept-open connection, send back to back."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.clients import TRANSPORT_ERRORS, ClientKind, Payload, PredictClient, encode_request
from loadtest.payloads import ModelInfo, SampleImage, check_prediction
from loadtest.procstats import process_cpu_s, tree_cpu_s


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """The q-th percentile of latencies (seconds) in milliseconds; NaN for none."""
    if not latencies_s:
        return float("nan")
    return float(np.percentile(np.asarray(latencies_s), q) * 1000.0)


@dataclass
class PointStats:
    """What the client saw during the measured window of one load point."""

    latencies_s: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    service_s: list[float] = field(default_factory=list)  # the answers' own timing.total_ms
    first_error: str | None = None

    def record_error(self, reason: str) -> None:
        """Count one failed request, keeping the first reason for the report."""
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason


@dataclass(frozen=True)
class PointResult:
    """Figures of one (model, batching, concurrency) point."""

    concurrency: int
    duration_s: float
    ok: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    service_p50_ms: float
    mean_batch: float
    server_cpu_ms_per_req: float
    client_cpu_ms_per_req: float
    first_error: str | None


async def _worker(
    client: PredictClient,
    model: ModelInfo,
    start: int,
    window: tuple[float, float],
    stats: PointStats,
) -> None:
    measure_from, stop_at = window
    for i in itertools.count(start):
        t0 = time.perf_counter()
        if t0 >= stop_at:
            return
        reason: str | None = None
        body: Any = None
        try:
            resp = await client.send(i)
            t1 = time.perf_counter()  # the answer is in; checking it is not its latency
            status = resp.status_code
            if status == 200:
                body = resp.json()
                reason = check_prediction(body, model, 1)
            else:
                reason = f"HTTP {status}: {resp.text[:200]}"
        except TRANSPORT_ERRORS as exc:
            t1 = time.perf_counter()
            status, reason = 0, f"{type(exc).__name__}: {exc}"
        if not measure_from <= t1 <= stop_at:
            continue  # completed during warm-up or after the end: outside the measured window
        stats.statuses[status] = stats.statuses.get(status, 0) + 1
        if reason is None:
            stats.ok += 1
            stats.latencies_s.append(t1 - t0)
            stats.batch_sizes.append(int(body.get("batch_size", 1)))
            total_ms = (body.get("timing") or {}).get("total_ms")
            if isinstance(total_ms, (int, float)):
                stats.service_s.append(total_ms / 1000.0)
        else:
            stats.record_error(reason)


async def run_point(
    url: str,
    model: ModelInfo,
    images: Sequence[SampleImage],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    payload: Payload = "multipart",
    server_pid: int | None = None,
    timeout_s: float = 30.0,
    client: ClientKind = "lean",
) -> PointResult:
    """``concurrency`` workers each send one image per request, back to back, for a while."""
    if not (0 < duration_s < float("inf") and 0 <= warmup_s < float("inf")):
        raise ValueError(
            f"a load point needs a finite duration above 0 (got {duration_s} s) "
            f"and a finite warm-up of at least 0 (got {warmup_s} s)"
        )
    bodies = [encode_request(model, [img], payload) for img in images]
    stats = PointStats()
    begin = time.perf_counter()
    window = (begin + warmup_s, begin + warmup_s + duration_s)
    cpu0: tuple[float, float] | None = None

    async def mark_start() -> None:
        nonlocal cpu0
        await asyncio.sleep(warmup_s)
        cpu0 = (_own_cpu_s(), tree_cpu_s(server_pid) if server_pid else 0.0)

    marker = asyncio.create_task(mark_start())
    clients = [PredictClient(url, bodies, client, 1, timeout_s) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(_worker(c, model, k, window, stats) for k, c in enumerate(clients)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    await marker
    client_cpu = _own_cpu_s() - cpu0[0] if cpu0 else float("nan")
    server_cpu = tree_cpu_s(server_pid) - cpu0[1] if cpu0 and server_pid else float("nan")
    done = max(stats.ok, 1)
    return PointResult(
        concurrency=concurrency,
        duration_s=duration_s,
        ok=stats.ok,
        errors=stats.errors,
        throughput_rps=stats.ok / duration_s,
        p50_ms=percentile_ms(stats.latencies_s, 50),
        p90_ms=percentile_ms(stats.latencies_s, 90),
        p99_ms=percentile_ms(stats.latencies_s, 99),
        service_p50_ms=percentile_ms(stats.service_s, 50),
        mean_batch=float(np.mean(stats.batch_sizes)) if stats.batch_sizes else float("nan"),
        server_cpu_ms_per_req=server_cpu * 1000.0 / done,
        client_cpu_ms_per_req=client_cpu * 1000.0 / done,
        first_error=stats.first_error,
    )


def _own_cpu_s() -> float:
    return process_cpu_s(os.getpid())
