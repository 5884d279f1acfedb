"""Routing by objective: the most accurate model that meets a latency budget and accuracy floor.

A request may name an objective instead of a model: ``latency_budget_ms`` (the end-to-end p99
it can accept), ``min_accuracy`` (a top-1 floor, from the cards), or both, optionally within a
``family`` (the data set its labels come from). Each candidate is the newest loaded version of a
model; its accuracy is its card's top-1 and its predicted p99 is the live p99 of its recent
requests (queue wait, inference and service overhead, as the clients saw them) while it has
recent traffic, else its batch-1 time measured at load plus the work queued ahead of it. The live
figure lags a sudden queue by up to a refresh, so it is never taken below the inference time the
work queued right now implies; that reacts to a burst at once. Both are figures of a one-input
request (the live p99 is of the recent latencies each brought to one input), and each of the
request's own inputs beyond the first adds the model's time per image measured at load. The
choice costs tens of microseconds with 16 models: the live p99 is recomputed at most every
``LatencyWindow.REFRESH`` requests or ``REFRESH_S`` seconds, not per request.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import Unprocessable

FALLBACKS = ("cheapest", "most_accurate")
# Service overhead added to a model's measured batch-1 time when it has no live figures yet
# (reading, decoding, answering a request; about what the service adds on the 2-core machine).
OVERHEAD_MS = 1.0


class LatencyWindow:
    """Recent end-to-end latencies of one model version (the live p50/p99 of /models and the
    router's prediction) with each request's input count, and the p99 (``robust_p99``) of those
    latencies brought to one input, cached.

    Recent means both: at most ``size`` requests and none older than ``MAX_AGE_S``. The age
    limit is what lets a model the router stopped choosing come back: its congested figures
    age out, it is predicted from its load-time figures again, gets traffic and a fresh window.
    """

    MIN_SAMPLES = 20  # fewer than this: no live figure yet
    MAX_AGE_S = 10.0  # requests older than this have left the window
    REFRESH = 32  # recompute the p99 after this many new requests ...
    REFRESH_S = 0.25  # ... or this long after the last computation

    def __init__(self, size: int = 1024) -> None:
        # (answered at, seconds, inputs)
        self._samples: deque[tuple[float, float, int]] = deque(maxlen=size)
        self._new = 0
        self._p99_ms: float | None = None
        self._per_image_ms = 0.0  # what the cached p99 took off per input beyond the first
        self._multi = 0  # samples of more than one input (none: nothing to bring to one input)
        self._computed_at = 0.0

    def add(self, seconds: float, now: float, inputs: int = 1) -> None:
        """One answered request's end-to-end latency and how many inputs it had."""
        samples = self._samples
        if len(samples) == samples.maxlen and samples[0][2] > 1:  # about to fall out
            self._multi -= 1
        samples.append((now, seconds, inputs))
        self._multi += inputs > 1
        self._new += 1

    def _expire(self, now: float) -> None:
        samples, oldest = self._samples, now - self.MAX_AGE_S
        while samples and samples[0][0] < oldest:
            self._multi -= samples.popleft()[2] > 1
            self._p99_ms = None

    def samples(self, now: float | None = None) -> np.ndarray:
        """The latencies in the window, in seconds."""
        self._expire(time.monotonic() if now is None else now)
        return np.fromiter((s for _, s, _ in self._samples), dtype=np.float64)

    def p99_ms(self, now: float, per_image_ms: float = 0.0) -> float | None:
        """The live p99 in ms of a one-input request, or None without enough recent requests
        (``MIN_SAMPLES``, or the whole window when it is smaller): each latency is brought to
        one input first, ``per_image_ms`` taken off for each of its inputs beyond the first, so
        that a window of mixed sizes says what one input takes (the slowest requests are the
        largest; their p99 is not a small request's)."""
        if self._samples and self._samples[0][0] < now - self.MAX_AGE_S:
            self._expire(now)
        enough = min(self.MIN_SAMPLES, self._samples.maxlen or self.MIN_SAMPLES)
        if len(self._samples) < enough:
            return None
        if (
            self._p99_ms is None
            or self._new >= self.REFRESH
            or now - self._computed_at > self.REFRESH_S
            or per_image_ms != self._per_image_ms
        ):
            ms = self.samples(now) * 1000.0
            if per_image_ms and self._multi:
                extra = np.fromiter((n - 1 for _, _, n in self._samples), dtype=np.float64)
                ms = np.maximum(ms - extra * per_image_ms, 0.0)
            self._p99_ms = robust_p99(ms)
            self._per_image_ms, self._new, self._computed_at = per_image_ms, 0, now
        return self._p99_ms


def robust_p99(samples: np.ndarray) -> float:
    """The 99th percentile of ``samples``, except that under 101 samples it is never above the
    second largest: with fewer, the 99th percentile is the maximum, and one slow request (a
    collection pause, a cold cache) would shut the model out until it ages out of the window.
    Two slow requests count."""
    n = len(samples)
    if n < 2:
        return float(samples.max()) if n else 0.0
    q = min(99.0, 100.0 * (n - 2) / (n - 1))  # at most the rank of the second largest
    return float(np.percentile(samples, q))


@dataclass(frozen=True)
class Objective:
    """What a request asks for instead of a model name."""

    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    family: str | None = None
    fallback: str | None = None

    @property
    def kind(self) -> str:
        """'latency', 'accuracy' or 'latency+accuracy' (the metric's label)."""
        parts = [
            name
            for name, value in (
                ("latency", self.latency_budget_ms),
                ("accuracy", self.min_accuracy),
            )
            if value is not None
        ]
        return "+".join(parts)

    def describe(self) -> dict[str, Any]:
        """The objective as the answer repeats it."""
        return {
            k: v
            for k, v in (
                ("latency_budget_ms", self.latency_budget_ms),
                ("min_accuracy", self.min_accuracy),
                ("family", self.family),
                ("fallback", self.fallback),
            )
            if v is not None
        }


def parse_objective(values: dict[str, Any]) -> Objective | None:
    """The objective in a request's fields (query or body), or None if it names none."""
    budget, floor = values.get("latency_budget_ms"), values.get("min_accuracy")
    family, fallback = values.get("family"), values.get("fallback")
    if budget is None and floor is None:
        if family is not None or fallback is not None:
            raise Unprocessable(
                "'family' and 'fallback' go with latency_budget_ms or min_accuracy",
                code="invalid_objective",
            )
        return None
    objective = Objective(
        latency_budget_ms=_number(budget, "latency_budget_ms", 0.0, 3_600_000.0),
        min_accuracy=_number(floor, "min_accuracy", 0.0, 1.0),
        family=_text(family, "family"),
        fallback=_text(fallback, "fallback"),
    )
    if objective.fallback is not None and objective.fallback not in FALLBACKS:
        raise Unprocessable(
            f"fallback must be one of {', '.join(FALLBACKS)}, not {objective.fallback!r}",
            code="invalid_objective",
        )
    return objective


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise Unprocessable(f"{name} must be a number", code="invalid_objective")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise Unprocessable(
            f"{name} must be a number, got {value!r}", code="invalid_objective"
        ) from None
    if not low < number <= high:
        raise Unprocessable(
            f"{name} must be above {low:g} and at most {high:g}, got {value!r}",
            code="invalid_objective",
        )
    return number


def _text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise Unprocessable(f"{name} must be a string", code="invalid_objective")


@dataclass(slots=True)
class Candidate:
    """One model version the router weighs: its accuracy (None: no card measured this version)
    and predicted p99, and where the prediction came from (``source``)."""

    served: Any  # ServedModel (typed loosely: the registry module imports this one)
    accuracy: float | None
    predicted_p99_ms: float
    live: bool
    queued: bool = False  # the live figure was below what the work queued now implies

    @property
    def source(self) -> str:
        """Where the prediction came from, as answers and /models say it."""
        if not self.live:
            return "measured at load"
        return "queued work" if self.queued else "live"

    @property
    def rank(self) -> float:
        """The accuracy to rank by: an unmeasured version ranks last."""
        return -1.0 if self.accuracy is None else self.accuracy


def candidates(
    models: list[Any], family: str | None, now: float, inputs: int = 1
) -> list[Candidate]:
    """The newest loaded version of each model (of ``family``), with its figures for a request
    of ``inputs`` inputs.

    Top-1 accuracies of different data sets do not compare: without ``family``, the models must
    all be of one data set (else the objective must say which, a 422 naming them); a family no
    model is of is a 422 naming those there are."""
    datasets = sorted({m.card.training.dataset for m in models})
    if family is None and len(datasets) > 1:
        raise Unprocessable(
            f"this server serves models of several data sets ({', '.join(datasets)}), whose "
            "accuracies do not compare: give 'family' to route among one of them",
            code="invalid_objective",
        )
    if family is not None and models and family not in datasets:
        raise Unprocessable(
            f"no model of family {family!r} is served; the families served: {', '.join(datasets)}",
            code="invalid_objective",
        )
    found = []
    for served in models:
        card = served.card
        if family is not None and card.training.dataset != family:
            continue
        # A version vouched for by another version's card has no accuracy of its own.
        accuracy = card.metrics.top1 if card.version == served.version else None
        per_image_ms = served.per_image_ms
        # the inference this request waits for and needs: no answer comes sooner
        work = served.batch1_ms + queued_work_ms(served) + (inputs - 1) * per_image_ms
        live = served.window.p99_ms(now, per_image_ms)
        if live is None:
            found.append(Candidate(served, accuracy, work + OVERHEAD_MS, False))
            continue
        predicted = live + (inputs - 1) * per_image_ms
        found.append(Candidate(served, accuracy, max(predicted, work), True, work > predicted))
    return found


def queued_work_ms(served: Any) -> float:
    """The inference the inputs queued for ``served`` now need, drained by its inference workers
    side by side: a batch's time per image each while batching is on; else each request runs
    alone, a batch-1 call and a time per image for each of its other inputs."""
    batcher, per_image_ms = served.batcher, served.per_image_ms
    queued_ms = batcher.queue_depth * per_image_ms
    if not served.batching:
        requests = batcher.queued_requests
        queued_ms = requests * served.batch1_ms + (batcher.queue_depth - requests) * per_image_ms
    layout = served.layout
    return queued_ms / (layout.inference_workers if layout is not None else 1)


def choose(
    found: list[Candidate], objective: Objective, headroom: float = 1.0
) -> tuple[Candidate, bool]:
    """The chosen candidate, and whether it met the objective (False: a fallback).

    A candidate meets the latency budget while its predicted p99 is within ``headroom`` times
    the budget, so traffic moves to a cheaper model before the budget breaks.
    """
    if not found:
        where = f" of family {objective.family!r}" if objective.family else ""
        raise Unprocessable(
            f"no model{where} is loaded to route to", code="no_model_meets_objective"
        )
    budget = objective.latency_budget_ms
    meeting = [c for c in found if meets(c, objective, headroom) == (True, True)]
    if meeting:
        return max(meeting, key=lambda c: (c.rank, -c.predicted_p99_ms)), True
    fastest = min(found, key=lambda c: (c.predicted_p99_ms, -c.rank))
    best = max(found, key=lambda c: (c.rank, -c.predicted_p99_ms))
    if objective.fallback == "cheapest":
        return fastest, False
    if objective.fallback == "most_accurate":
        return best, False
    raise Unprocessable(
        "no model meets the objective "
        + ", ".join(f"{k}={v}" for k, v in objective.describe().items())
        + f"; the fastest is {fastest.served.name} (predicted p99 "
        f"{fastest.predicted_p99_ms:.2f} ms, top-1 {_percent(fastest.accuracy)}), the most "
        f"accurate {best.served.name} (predicted p99 {best.predicted_p99_ms:.2f} ms, top-1 "
        f"{_percent(best.accuracy)})"
        + (
            f"; a model meets the budget at a predicted p99 of {budget * headroom:.2f} ms "
            f"or less (routing_headroom {headroom:g})"
            if budget is not None and headroom < 1.0
            else ""
        )
        + "; relax the objective or add fallback=cheapest|most_accurate",
        code="no_model_meets_objective",
    )


def meets(candidate: Candidate, objective: Objective, headroom: float = 1.0) -> tuple[bool, bool]:
    """Whether ``candidate`` meets the objective's latency budget (within ``headroom`` of it)
    and its accuracy floor; True where the objective sets none. An unmeasured accuracy meets
    no floor."""
    budget, floor = objective.latency_budget_ms, objective.min_accuracy
    return (
        budget is None or candidate.predicted_p99_ms <= budget * headroom,
        floor is None or (candidate.accuracy is not None and candidate.accuracy >= floor),
    )


def _percent(accuracy: float | None) -> str:
    return "unmeasured" if accuracy is None else f"{accuracy:.2%}"


def routing_note(
    chosen: Candidate,
    met: bool,
    objective: Objective,
    considered: int,
    headroom: float = 1.0,
) -> dict[str, Any]:
    """What the answer says about the choice; after a fallback, which part of the objective
    the model served meets (``meets``: latency_budget_ms, min_accuracy)."""
    note: dict[str, Any] = {
        "objective": objective.describe(),
        "chosen": f"{chosen.served.name}:{chosen.served.version}",
        "predicted_p99_ms": round(chosen.predicted_p99_ms, 3),
        "prediction": chosen.source,
        "accuracy": chosen.accuracy,
        "candidates_considered": considered,
    }
    if not met:
        note["fallback"] = objective.fallback
        latency, accuracy = meets(chosen, objective, headroom)
        note["meets"] = {
            k: v
            for k, v, asked in (
                ("latency_budget_ms", latency, objective.latency_budget_ms),
                ("min_accuracy", accuracy, objective.min_accuracy),
            )
            if asked is not None
        }
    return note


def now() -> float:
    """The clock the windows use."""
    return time.monotonic()
