"""Closed-loop load routed by objective: one ramp step and what the router did with it."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlencode

from loadtest.leanhttp import LeanConnection, LeanHTTPError, build_request
from loadtest.payloads import (
    ModelInfo,
    SampleImage,
    check_prediction,
    encode_multipart,
    parse_model,
)
from loadtest.sweep import percentile_ms

UNMET_CODE = "no_model_meets_objective"  # the 422 of an objective no model meets


@dataclass(frozen=True)
class Candidate:
    """A model version the router weighs: its key in answers (``name:version``) and accuracy."""

    key: str
    model: ModelInfo
    accuracy: float


def candidates_from(body: Any, family: str | None = None) -> list[Candidate]:
    """The router's candidates in a GET /models body (the newest version of each model, of
    ``family``), most accurate first, with the accuracy the router weighs them by."""
    entries = body.get("models", body) if isinstance(body, Mapping) else body
    if not isinstance(entries, list):
        raise ValueError("GET /models returned no list of models")
    found = []
    for entry in entries:
        versions = entry.get("versions") or []
        if not versions or not isinstance(entry.get("name"), str):
            continue
        info = parse_model(entry)
        if family is not None and info.dataset != family:
            continue
        newest = versions[-1]
        accuracy = (newest.get("routing") or {}).get("accuracy", info.top1 or 0.0)
        found.append(Candidate(f"{info.name}:{newest['version']}", info, float(accuracy)))
    if not found:
        raise ValueError("no model to route to" + (f" of family {family!r}" if family else ""))
    return sorted(found, key=lambda c: (-c.accuracy, c.key))


def routed_requests(
    url: str, images: Sequence[SampleImage], budget_ms: float, family: str | None = None
) -> list[bytes]:
    """One pre-encoded ``POST /predict?latency_budget_ms=...`` per image (multipart, no model)."""
    query = {"latency_budget_ms": f"{budget_ms:g}"} | ({"family": family} if family else {})
    path = "/predict?" + urlencode(query)
    return [build_request(url, path, *encode_multipart([img])) for img in images]


@dataclass
class StepStats:
    """What the clients saw during one step: answers per chosen model, 422s, errors."""

    latencies_s: list[float] = field(default_factory=list)  # of the answered (200) requests
    # Their timing.total_ms: from arrival to answer, the latencies the router's window holds.
    service_s: list[float] = field(default_factory=list)
    chosen: Counter[str] = field(default_factory=Counter)
    accuracy_sum: float = 0.0  # of the answers' routing.accuracy
    unmet: int = 0
    errors: int = 0
    first_error: str | None = None

    def answered(self, key: str, accuracy: float, latency_s: float, service_s: float) -> None:
        """Count one 200 answer routed to ``key``."""
        self.chosen[key] += 1
        self.accuracy_sum += accuracy
        self.latencies_s.append(latency_s)
        if not math.isnan(service_s):
            self.service_s.append(service_s)

    def failed(self, reason: str) -> None:
        """Count one failed request, keeping the first reason for the report."""
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason


@dataclass(frozen=True)
class RampStep:
    """Figures of one ramp step (one concurrency level)."""

    concurrency: int
    duration_s: float
    ok: int
    unmet: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    service_p99_ms: float  # the answers' own timing.total_ms, as the router sees them
    within_budget: bool | None  # None: no answer to judge by
    mean_accuracy: float  # mean routing.accuracy of the answers (share-weighted card top-1)
    shares: dict[str, float]  # chosen model -> fraction of the answers; sums to 1
    first_error: str | None

    @property
    def requests(self) -> int:
        """Requests completed in the step: answered, refused with 422, failed."""
        return self.ok + self.unmet + self.errors


def summarize(stats: StepStats, concurrency: int, duration_s: float, budget_ms: float) -> RampStep:
    """The step's figures from what its clients saw."""
    ok = sum(stats.chosen.values())
    p99 = percentile_ms(stats.latencies_s, 99)
    return RampStep(
        concurrency=concurrency,
        duration_s=duration_s,
        ok=ok,
        unmet=stats.unmet,
        errors=stats.errors,
        throughput_rps=ok / duration_s if duration_s > 0 else 0.0,
        p50_ms=percentile_ms(stats.latencies_s, 50),
        p99_ms=p99,
        service_p99_ms=percentile_ms(stats.service_s, 99),
        within_budget=None if math.isnan(p99) else p99 <= budget_ms,
        mean_accuracy=stats.accuracy_sum / ok if ok else float("nan"),
        shares={k: n / ok for k, n in sorted(stats.chosen.items(), key=lambda kv: -kv[1])},
        first_error=stats.first_error,
    )


class Outcome(NamedTuple):
    """One answer as the ramp counts it."""

    kind: str  # "ok", "unmet" (422: no model meets the objective) or "error"
    detail: str | None = None  # ok: the chosen model; error: the reason
    accuracy: float = 0.0  # ok: routing.accuracy
    service_s: float = math.nan  # ok: timing.total_ms in seconds


def classify(status: int, body: Any, models: Mapping[str, ModelInfo]) -> Outcome:
    """What one /predict answer counts as: a checked 200 answer, a 422 unmet, or an error."""
    unmet = isinstance(body, Mapping) and (body.get("error") or {}).get("code") == UNMET_CODE
    if status == 422 and unmet:
        return Outcome("unmet")
    if status != 200 or not isinstance(body, Mapping):
        return Outcome("error", f"HTTP {status}: {str(body)[:200]}")
    routing = body.get("routing")
    if not isinstance(routing, Mapping) or not isinstance(routing.get("chosen"), str):
        return Outcome("error", "answer without routing.chosen")
    model = models.get(str(body.get("model")))
    if model is None:
        return Outcome("error", f"answered by unknown model {body.get('model')!r}")
    reason = check_prediction(body, model, 1)
    if reason is not None:
        return Outcome("error", reason)
    total_ms = (body.get("timing") or {}).get("total_ms")
    service_s = total_ms / 1000.0 if isinstance(total_ms, (int, float)) else math.nan
    return Outcome("ok", routing["chosen"], float(routing.get("accuracy", 0.0)), service_s)


async def _worker(
    conn: LeanConnection,
    requests: Sequence[bytes],
    start: int,
    window: tuple[float, float],
    models: Mapping[str, ModelInfo],
    stats: StepStats,
) -> None:
    measure_from, stop_at = window
    for i in itertools.count(start):
        t0 = time.perf_counter()
        if t0 >= stop_at:
            return
        try:
            resp = await conn.request(requests[i % len(requests)])
            t1 = time.perf_counter()  # the answer is in; parsing it is not its latency
            try:
                body: Any = resp.json()
            except ValueError:
                body = resp.text
            outcome = classify(resp.status_code, body, models)
        except LeanHTTPError as exc:
            t1 = time.perf_counter()
            outcome = Outcome("error", f"{type(exc).__name__}: {exc}")
        if not measure_from <= t1 <= stop_at:
            continue
        if outcome.kind == "ok":
            stats.answered(str(outcome.detail), outcome.accuracy, t1 - t0, outcome.service_s)
        elif outcome.kind == "unmet":
            stats.unmet += 1
        else:
            stats.failed(str(outcome.detail))


async def run_step(
    url: str,
    requests: Sequence[bytes],
    models: Mapping[str, ModelInfo],
    concurrency: int,
    duration_s: float,
    timeout_s: float = 30.0,
) -> StepStats:
    """``concurrency`` clients, each on its own kept-open connection, send back to back for
    ``duration_s``; the whole step is measured (the ramp's warm-up is a step of its own)."""
    stats = StepStats()
    begin = time.perf_counter()
    window = (begin, begin + duration_s)
    conns = [LeanConnection(url, timeout_s) for _ in range(concurrency)]
    try:
        await asyncio.gather(
            *(_worker(c, requests, k, window, models, stats) for k, c in enumerate(conns))
        )
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return stats
