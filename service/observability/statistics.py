"""Triton's statistics extension: each model version's cumulative counts and times, from /metrics.

Triton's ``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics`` answer
what ``perf_analyzer`` reads to split a request's server time into queue and compute, and what
``tritonclient``'s ``get_inference_statistics`` returns. The figures are the service's Prometheus
counters and histograms, read as a scrape reads them, so that with several worker processes they
are the whole service's (every worker's files merged), not the share of whichever worker answers;
they are cumulative from the process's start (a version reloaded keeps counting); the times a
worker sums per request reach its counters within ``FLUSH_S`` (this worker's, before a read, at
once). Per version:

- ``success``: 2xx requests and their end-to-end time (``request_latency_seconds``);
- ``queue``, ``compute_input``, ``compute_infer``, ``compute_output``: the same 2xx requests
  (one count for all, as Triton's: perf_analyzer refuses a report whose compute counts differ),
  and their summed wait in the batcher's queue; time from arrival to tensors ready for the queue
  (reading and decoding the body, and waiting for the event loop); their batch's ONNX Runtime
  time (a batch of three requests counts three times, as Triton charges them); and building the
  answer from the batch's rows;
- ``fail``: requests that named the version and got any other status, and their time;
- ``inference_count``: the 2xx requests' inputs; ``execution_count``: batches run;
  ``last_inference``: milliseconds since the epoch of the last batch (0 before any);
- ``batch_stats``: per batch size, the batches run and their ONNX Runtime time
  (``compute_infer``); batches and their sizes include the agreement samples a reference runs;
- ``cache_hit`` / ``cache_miss``: 0 (there is no response cache); ``response_stats``: none (no
  model is decoupled).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from service.observability.metrics import PREFIX, ServiceMetrics

# The metrics read, and their sample names (a counter's value is its ``_total`` sample; a
# histogram's are ``_count`` and ``_sum``; a gauge's its own name).
_LATENCY = f"{PREFIX}_request_latency_seconds"
_BATCH = f"{PREFIX}_batch_size"
_REQUESTS = f"{PREFIX}_requests_total"
_FAILURE = f"{PREFIX}_request_failure_seconds_total"
_PHASES = {
    "queue": f"{PREFIX}_request_queue_seconds_total",
    "compute_input": f"{PREFIX}_request_decode_seconds_total",
    "compute_infer": f"{PREFIX}_request_inference_seconds_total",
    "compute_output": f"{PREFIX}_request_answer_seconds_total",
}
_INPUTS = f"{PREFIX}_request_inputs_total"
_BATCHES = f"{PREFIX}_batches_total"
_BATCH_INFERENCE = f"{PREFIX}_batch_inference_seconds_total"
_LAST = f"{PREFIX}_last_inference_timestamp_seconds"

_PER_VERSION = {
    f"{_LATENCY}_count",
    f"{_LATENCY}_sum",
    f"{_BATCH}_count",
    _FAILURE,
    *_PHASES.values(),
    _INPUTS,
    _LAST,
}
_PER_SIZE = {_BATCHES, _BATCH_INFERENCE}

Version = tuple[str, str]  # (model name, version)


def duration(count: float, seconds: float) -> dict[str, int]:
    """Triton's StatisticDuration: a count and a cumulative time in nanoseconds."""
    return {"count": int(count), "ns": max(0, round(seconds * 1e9))}


def _read(metrics: ServiceMetrics) -> Iterable[Metric]:
    m = metrics
    return m.families(
        m.requests,
        m.request_latency,
        m.batch_size,
        m.request_failure_time,
        m.request_decode_time,
        m.request_queue_time,
        m.request_inference_time,
        m.request_answer_time,
        m.request_inputs,
        m.batches_by_size,
        m.batch_inference_by_size,
        m.last_inference,
    )


class Figures:
    """The samples the statistics need, for the versions asked about (None: every version the
    samples name), from one collection of the metrics."""

    def __init__(self, families: Iterable[Metric], versions: set[Version] | None) -> None:
        self.values: dict[tuple[str, Version], float] = defaultdict(float)
        self.failed: dict[Version, float] = defaultdict(float)
        self.failed_by_status: dict[Version, dict[str, float]] = defaultdict(dict)
        self.sizes: dict[Version, dict[int, list[float]]] = defaultdict(dict)
        self.versions: set[Version] = set()  # the versions that have any of the samples
        for family in families:
            for sample in family.samples:
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                if versions is not None and key not in versions:
                    continue
                if sample.name in _PER_VERSION or sample.name == _REQUESTS:
                    self.versions.add(key)
                name = sample.name
                if name in _PER_VERSION:
                    self.values[name, key] += sample.value
                elif name == _REQUESTS:
                    status = sample.labels.get("status", "")
                    if not status.startswith("2"):
                        self.failed[key] += sample.value
                        by_status = self.failed_by_status[key]
                        by_status[status] = by_status.get(status, 0.0) + sample.value
                elif name in _PER_SIZE:
                    size = int(sample.labels["batch_size"])
                    pair = self.sizes[key].setdefault(size, [0.0, 0.0])
                    pair[0 if name == _BATCHES else 1] += sample.value

    def of(self, name: str, version: Version) -> float:
        return self.values.get((name, version), 0.0)

    def entry(self, key: Version) -> dict[str, Any]:
        """Triton's ``model_stats`` entry (its JSON shape) of one version."""
        of = self.of
        successes = of(f"{_LATENCY}_count", key)
        inference_stats = {
            "success": duration(successes, of(f"{_LATENCY}_sum", key)),
            "fail": duration(self.failed.get(key, 0.0), of(_FAILURE, key)),
            **{phase: duration(successes, of(name, key)) for phase, name in _PHASES.items()},
            "cache_hit": duration(0, 0.0),
            "cache_miss": duration(0, 0.0),
        }
        return {
            "name": key[0],
            "version": key[1],
            "last_inference": round(of(_LAST, key) * 1000),
            "inference_count": int(of(_INPUTS, key)),
            "execution_count": int(of(f"{_BATCH}_count", key)),
            "inference_stats": inference_stats,
            "batch_stats": [
                {"batch_size": size, "compute_infer": duration(batches, seconds)}
                for size, (batches, seconds) in sorted(self.sizes[key].items())
            ],
            "memory_usage": [],
            "response_stats": {},
        }


def model_statistics(metrics: ServiceMetrics, versions: Iterable[Version]) -> list[dict[str, Any]]:
    """Triton's ``model_stats`` entries (its JSON shape) of ``versions``, in that order. Reads
    the metrics as a scrape does: with several workers, every worker's files (call it off the
    event loop)."""
    wanted = list(versions)
    figures = Figures(_read(metrics), set(wanted))
    return [figures.entry(key) for key in wanted]
