"""Triton's statistics extension: each model version's cumulative counts and times, from /metrics.

Triton's ``GET /v2/models[/{name}[/versions/{v}]]/stats`` and gRPC ``ModelStatistics`` answer
what ``perf_analyzer`` reads to split a request's server time into queue and compute, and what
``tritonclient``'s ``get_inference_statistics`` returns. The figures are the service's Prometheus
counters and histograms, read as a scrape reads them, so that with several worker processes they
are the whole service's (every worker's files merged), not the share of whichever worker answers;
they are cumulative from the process's start, as Triton's are. Per model version:

- ``success``: 2xx requests and their end-to-end time (``request_latency_seconds``);
- ``fail``: requests that named the version and got any other status, and their time;
- ``queue``: requests that reached a batch, and their wait in the batcher's queue;
- ``compute_input``: 2xx requests, and their time from arrival to tensors ready for the queue
  (reading and decoding the body: here that is the work before the model, done per request);
- ``compute_infer``: requests whose batch ran, each charged its batch's ONNX Runtime time (a
  batch of three requests counts three times), as Triton charges them;
- ``compute_output``: 2xx requests, and the time building their answer from the batch's rows;
- ``inference_count`` / ``execution_count``: inputs inferred / batches run; ``last_inference``:
  milliseconds since the epoch of the last batch (0 before any);
- ``batch_stats``: per batch size, the batches run and their ONNX Runtime time
  (``compute_infer``; the input and output work is per request here, in the figures above);
- ``cache_hit`` / ``cache_miss``: 0 (there is no response cache).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from service.observability.metrics import PREFIX, ServiceMetrics

# The sample names read (a counter's value is its ``_total`` sample; a histogram's are
# ``_count`` and ``_sum``; a gauge's its own name).
_LATENCY = f"{PREFIX}_request_latency_seconds"
_QUEUE = f"{PREFIX}_queue_wait_seconds"
_BATCH = f"{PREFIX}_batch_size"
_REQUESTS = f"{PREFIX}_requests_total"
_FAILURE = f"{PREFIX}_request_failure_seconds_total"
_DECODE = f"{PREFIX}_request_decode_seconds_total"
_ANSWER = f"{PREFIX}_request_answer_seconds_total"
_BATCHED = f"{PREFIX}_batched_requests_total"
_BATCHED_INFERENCE = f"{PREFIX}_batched_request_inference_seconds_total"
_BATCHES = f"{PREFIX}_batches_total"
_BATCH_INFERENCE = f"{PREFIX}_batch_inference_seconds_total"
_LAST = f"{PREFIX}_last_inference_timestamp_seconds"

_PER_VERSION = {
    f"{_LATENCY}_count",
    f"{_LATENCY}_sum",
    f"{_QUEUE}_count",
    f"{_QUEUE}_sum",
    f"{_BATCH}_count",
    f"{_BATCH}_sum",
    _FAILURE,
    _DECODE,
    _ANSWER,
    _BATCHED,
    _BATCHED_INFERENCE,
    _LAST,
}
_PER_SIZE = {_BATCHES, _BATCH_INFERENCE}

Version = tuple[str, str]  # (model name, version)


def duration(count: float, seconds: float) -> dict[str, int]:
    """Triton's StatisticDuration: a count and a cumulative time in nanoseconds."""
    return {"count": int(count), "ns": max(0, round(seconds * 1e9))}


class _Figures:
    """The samples the statistics need, for the versions asked about, from one collection."""

    def __init__(self, metrics: ServiceMetrics, versions: set[Version]) -> None:
        self.values: dict[tuple[str, Version], float] = defaultdict(float)
        self.failed: dict[Version, float] = defaultdict(float)
        self.sizes: dict[Version, dict[int, list[float]]] = defaultdict(dict)
        for family in metrics.collect():
            for sample in family.samples:
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                if key not in versions:
                    continue
                name = sample.name
                if name in _PER_VERSION:
                    self.values[name, key] += sample.value
                elif name == _REQUESTS:
                    if not sample.labels.get("status", "").startswith("2"):
                        self.failed[key] += sample.value
                elif name in _PER_SIZE:
                    size = int(sample.labels["batch_size"])
                    pair = self.sizes[key].setdefault(size, [0.0, 0.0])
                    pair[0 if name == _BATCHES else 1] += sample.value

    def of(self, name: str, version: Version) -> float:
        return self.values.get((name, version), 0.0)


def model_statistics(metrics: ServiceMetrics, versions: Iterable[Version]) -> list[dict[str, Any]]:
    """Triton's ``model_stats`` entries (its JSON shape) of ``versions``, in that order."""
    wanted = list(versions)
    figures = _Figures(metrics, set(wanted))
    entries = []
    for key in wanted:
        of = figures.of
        successes = of(f"{_LATENCY}_count", key)
        entries.append(
            {
                "name": key[0],
                "version": key[1],
                "last_inference": round(of(_LAST, key) * 1000),
                "inference_count": int(of(f"{_BATCH}_sum", key)),
                "execution_count": int(of(f"{_BATCH}_count", key)),
                "inference_stats": {
                    "success": duration(successes, of(f"{_LATENCY}_sum", key)),
                    "fail": duration(figures.failed.get(key, 0.0), of(_FAILURE, key)),
                    "queue": duration(of(f"{_QUEUE}_count", key), of(f"{_QUEUE}_sum", key)),
                    "compute_input": duration(successes, of(_DECODE, key)),
                    "compute_infer": duration(of(_BATCHED, key), of(_BATCHED_INFERENCE, key)),
                    "compute_output": duration(successes, of(_ANSWER, key)),
                    "cache_hit": duration(0, 0.0),
                    "cache_miss": duration(0, 0.0),
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": duration(batches, seconds)}
                    for size, (batches, seconds) in sorted(figures.sizes[key].items())
                ],
                "memory_usage": [],
            }
        )
    return entries
