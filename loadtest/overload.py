"""Overload scenario: open-loop arrivals at ~4x measured capacity, then watch the service recover.

Figures reported: capacity, offered rate, status counts, 503/504 without Retry-After, any other
error, p99 of accepted requests against the configured timeout, server RSS before/peak/after, and
how many seconds after the load stops single requests are back to baseline latency; then the
issue's criteria, each true or false (``python -m loadtest.bench --overload`` exits 1 if any is
false).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.clients import TRANSPORT_ERRORS, ClientKind, PredictClient, encode_request
from loadtest.payloads import ModelInfo, SampleImage, check_prediction, images_for
from loadtest.server import RunningService, ServiceStartError, start_service
from loadtest.sweep import percentile_ms, run_point

SHED_STATUSES = (503, 504)
# At most this many requests in flight (one connection each). An arrival finding them all busy
# is dropped and counted, never queued in the client: client-side waiting would be reported as
# service latency, and 512 concurrent clients are well beyond what a 2-core service absorbs.
MAX_CONNECTIONS = 512
RSS_GROWTH_LIMIT_MIB = 64.0  # "resident memory bounded": peak within this of the pre-load RSS
RECOVERY_LIMIT_S = 5.0


@dataclass
class OverloadLog:
    """Everything the client saw while overloading."""

    sent: int = 0
    not_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    accepted_s: list[float] = field(default_factory=list)
    shed_without_retry_after: int = 0
    other_errors: int = 0
    first_other_error: str | None = None
    rss: list[int] = field(default_factory=list)

    def other(self, reason: str) -> None:
        """Count an answer that is neither a valid 200 nor a 503/504."""
        self.other_errors += 1
        self.first_other_error = self.first_other_error or reason


async def _one(client: PredictClient, model: ModelInfo, i: int, log: OverloadLog) -> None:
    try:
        resp, t0 = await client.send_timed(i)
    except TRANSPORT_ERRORS as exc:
        log.statuses["transport"] = log.statuses.get("transport", 0) + 1
        log.other(f"{type(exc).__name__}: {exc}")
        return
    t1 = time.perf_counter()
    elapsed = t1 - t0
    key = str(resp.status_code)
    log.statuses[key] = log.statuses.get(key, 0) + 1
    if resp.status_code == 200:
        reason = check_prediction(resp.json(), model, 1)
        if reason:
            log.other(f"invalid 200: {reason}")
        else:
            log.accepted_s.append(elapsed)
    elif resp.status_code in SHED_STATUSES:
        if "retry-after" not in resp.headers:
            log.shed_without_retry_after += 1
    else:
        log.other(f"HTTP {resp.status_code}: {resp.text[:200]}")


async def _sample_rss(
    service: RunningService | None, log: OverloadLog, stop: asyncio.Event
) -> None:
    while service is not None and not stop.is_set():
        log.rss.append(service.rss_bytes())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _probe_recovery(
    url: str,
    model: ModelInfo,
    images: Sequence[SampleImage],
    threshold_s: float,
    limit_s: float,
    client_kind: ClientKind,
) -> tuple[float | None, float]:
    """Seconds until 5 single requests in a row are under ``threshold_s``; and their p50 (ms)."""
    bodies = [encode_request(model, [img], "multipart") for img in images]
    start = time.perf_counter()
    streak: list[float] = []
    async with PredictClient(url, bodies, client_kind, 1, 30.0) as client:
        i = 0
        while time.perf_counter() - start < limit_s:
            t0 = time.perf_counter()
            try:
                resp = await client.send(i)
                good = resp.status_code == 200
            except TRANSPORT_ERRORS:
                good = False
            elapsed = time.perf_counter() - t0
            i += 1
            streak = [*streak, elapsed] if good and elapsed <= threshold_s else []
            if len(streak) == 5:
                return time.perf_counter() - start, percentile_ms(streak, 50)
            if not good:
                await asyncio.sleep(0.05)
    return None, float("nan")


async def _overload(
    args: argparse.Namespace, url: str, service: RunningService | None, model: ModelInfo
) -> dict[str, Any]:
    images = images_for(model)
    short = 1.5 if args.quick else 3.0
    pid = service.pid if service else None
    kind = args.client
    capacity = await run_point(
        url, model, images, 64, short, short / 3, server_pid=pid, client=kind
    )
    baseline = await run_point(url, model, images, 1, short, short / 3, server_pid=pid, client=kind)
    if capacity.ok == 0 or baseline.ok == 0:
        raise RuntimeError(f"no successful request to measure capacity: {capacity.first_error}")
    rate = args.overload_factor * capacity.throughput_rps
    bodies = [encode_request(model, [img], "multipart") for img in images]
    log = OverloadLog()
    stop_rss = asyncio.Event()
    rss_before = service.rss_bytes() if service else 0
    sampler = asyncio.create_task(_sample_rss(service, log, stop_rss))
    client_timeout = args.timeout_ms / 1000.0 + 10.0
    async with PredictClient(url, bodies, kind, MAX_CONNECTIONS, client_timeout) as client:
        tasks: set[asyncio.Task[None]] = set()
        begin = time.perf_counter()
        while (now := time.perf_counter()) - begin < args.overload_seconds:
            due = int((now - begin) * rate) - log.sent - log.not_sent
            for _ in range(max(due, 0)):
                if len(tasks) >= MAX_CONNECTIONS:
                    log.not_sent += 1
                    continue
                task = asyncio.create_task(_one(client, model, log.sent, log))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                log.sent += 1
            await asyncio.sleep(0.002)
        load_s = time.perf_counter() - begin
        threshold_s = max(2.0 * baseline.p50_ms, baseline.p50_ms + 2.0) / 1000.0
        probe = asyncio.create_task(_probe_recovery(url, model, images, threshold_s, 30.0, kind))
        if tasks:
            await asyncio.wait(tasks)
        recovery_s, post_p50_ms = await probe
    stop_rss.set()
    await sampler
    rss_after = service.rss_bytes() if service else 0
    p99 = percentile_ms(log.accepted_s, 99)
    mib = 1024.0 * 1024.0
    peak_mib = max(log.rss, default=0) / mib
    criteria = {
        "only_200_503_504": log.other_errors == 0,
        "retry_after_on_every_503_504": log.shed_without_retry_after == 0,
        "accepted_p99_within_timeout": bool(p99 <= args.timeout_ms),
        "rss_bounded": service is None or peak_mib - rss_before / mib <= RSS_GROWTH_LIMIT_MIB,
        "recovered_within_5s": recovery_s is not None and recovery_s <= RECOVERY_LIMIT_S,
    }
    return {
        "model": model.name,
        "capacity_rps": round(capacity.throughput_rps, 1),
        "baseline_p50_ms": round(baseline.p50_ms, 3),
        "target_rps": round(rate, 1),
        "arrival_rps": round((log.sent + log.not_sent) / load_s, 1),
        "sent_rps": round(log.sent / load_s, 1),
        "sent_over_capacity": round(log.sent / load_s / max(capacity.throughput_rps, 1e-9), 2),
        "load_seconds": round(load_s, 1),
        "sent": log.sent,
        "dropped_all_connections_busy": log.not_sent,
        "statuses": dict(sorted(log.statuses.items())),
        "shed_without_retry_after": log.shed_without_retry_after,
        "other_errors": log.other_errors,
        "first_other_error": log.first_other_error,
        "accepted_p50_ms": _finite(percentile_ms(log.accepted_s, 50), 2),
        "accepted_p99_ms": _finite(p99, 2),
        "timeout_ms": args.timeout_ms,
        "rss_before_mib": round(rss_before / mib, 1),
        "rss_peak_mib": round(peak_mib, 1),
        "rss_after_mib": round(rss_after / mib, 1),
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        "recovered_p50_ms": _finite(post_p50_ms, 3),
        "recovery_threshold_ms": round(threshold_s * 1000.0, 3),
        "criteria": criteria,
        "passed": all(criteria.values()),
    }


def _finite(x: float, digits: int) -> float | None:
    """Rounded, or None for NaN (the report is strict JSON)."""
    return None if math.isnan(x) else round(x, digits)


def _pick(models: Sequence[ModelInfo], wanted: Sequence[str]) -> ModelInfo:
    if wanted:
        return next(m for m in models if m.name == wanted[0])
    return max(models, key=lambda m: (m.macs, m.name))


def run_overload(args: argparse.Namespace, machine: str) -> dict[str, Any]:
    """Start (or target) the service with a short timeout and bounded queue, overload it, report."""
    from loadtest.bench import BenchError, discover_models, service_env

    env = {
        **service_env(args, batching=True),
        "ROCKETSERVE_MAX_QUEUE_SIZE": str(args.queue_size),
        "ROCKETSERVE_REQUEST_TIMEOUT_MS": str(args.timeout_ms),
    }
    if args.url:
        models = discover_models(args.url, args.models)
        model = _pick(models, args.models)
        report = asyncio.run(_overload(args, args.url.rstrip("/"), None, model))
    else:
        try:
            log_path = args.out / "service-overload.log"
            with start_service(args.model_repository, log_path, env) as svc:
                models = discover_models(svc.url, args.models)
                report = asyncio.run(_overload(args, svc.url, svc, _pick(models, args.models)))
        except ServiceStartError as exc:
            raise BenchError(str(exc)) from None
    report["machine"] = machine
    report["service_settings"] = {k: v for k, v in env.items() if not args.url}
    for key, value in report.items():
        print(f"{key:>30}: {value}")
    return report
