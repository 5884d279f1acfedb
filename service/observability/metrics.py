"""Prometheus metrics of the service, on a registry owned by the app (never the global one).

The metric names below are a contract with deploy/ (Grafana dashboards, alert rules): rename
one and the dashboards' PromQL must follow.

With several worker processes (``service.observability.multiprocess``) a scrape merges every
worker's values: counters and histograms are summed; each gauge says how (``multiprocess_mode``),
and only live workers count ('live...'; a dead worker's gauges are dropped):

- ``livesum``: queue depth, queue capacity, in-flight requests: the service's totals (each worker
  has its own queue of ``max_queue_size``, so depth / capacity stays the service's fill);
- ``livemin``: model ready: 1 only when every live worker has the version ready, 0 when any
  has not (failed, unloaded, shutting down);
- ``livemax``: model info, top-1, parameters, MACs: the same constant in every worker (read from
  the same card), which a sum would multiply by the number of workers.
- ``max``: the last inference's time, the latest of any worker, a dead one's included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any
from weakref import WeakSet

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from service.observability.multiprocess import (
    WorkersCollector,
    forget_dead_workers,
    multiprocess_dir,
)

PREFIX = "rocketserve"

# 0.1 ms .. 10 s, roughly 2-2.5x apart: fine enough for sub-millisecond CPU models, wide
# enough for timeouts. Histograms (not summaries) so quantiles aggregate across replicas.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Powers of two up to the largest max_batch_size the settings allow (4096).
BATCH_SIZE_BUCKETS = tuple(2**i for i in range(13))
# Statuses every model version's request counter starts with at 0, so that rate() and increase()
# see the first of each (a series born at its first increment hides that increment).
STARTING_STATUSES = (200, 503, 504)

MODEL_LABELS = ("model", "version")
# How long the statistics' sums (service.observability.statistics) may gather on the event loop
# before they are written to their counters: one write per sum then, not one per request.
FLUSH_S = 0.1


class Deferred:
    """Sums gathered on the event loop and written to their metrics at most FLUSH_S later.

    A write to a prometheus-client value takes a lock (and, with several workers, a write to a
    memory-mapped file): per request, for every figure of the statistics, it would double what a
    request's metrics cost. ``ServiceMetrics.flush`` writes them all before a scrape or a read.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._scheduled = False
        metrics.deferred.add(self)

    def _gathered(self) -> None:
        """Something was added: have it written within FLUSH_S (at once with no running loop)."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what was gathered to the metrics."""
        self._scheduled = False
        self._write()

    def _write(self) -> None:
        raise NotImplementedError


class ServiceMetrics:
    """All metrics of one app instance, registered on ``registry``.

    When prometheus-client writes metric files (several workers), ``exposition()`` reads every
    worker's files instead of this instance's registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.deferred: WeakSet[Deferred] = WeakSet()
        self._scraped = self.registry
        shared = multiprocess_dir()
        if shared is not None:
            forget_dead_workers(shared)  # a replacement worker starts: its predecessor is gone
            self._scraped = CollectorRegistry()
            self._scraped.register(WorkersCollector(shared))
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Prediction requests by model, version and HTTP status code.",
            [*MODEL_LABELS, "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_latency_seconds",
            "End-to-end latency of a successful (2xx) prediction request (decode, queue, "
            "inference, encode); refusals and errors are counted in requests_total, not timed.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time an input waited in the batcher queue before its batch started.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            f"{PREFIX}_inference_seconds",
            "ONNX Runtime time of one batch.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Number of inputs in each batch sent to ONNX Runtime.",
            MODEL_LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        # The figures Triton's statistics extension reports (service.observability.statistics),
        # as counters so that several workers' sum. A successful request's phases are summed
        # when it is answered (and written within FLUSH_S: Deferred); their count is the
        # successes', so that every phase has one count.
        self.request_failure_time = Counter(
            f"{PREFIX}_request_failure_seconds",
            "Summed time of prediction requests that named the version and failed (any status "
            "but 2xx).",
            MODEL_LABELS,
            registry=r,
        )
        self.request_decode_time = Counter(
            f"{PREFIX}_request_decode_seconds",
            "Summed time successful prediction requests took from arrival to tensors ready for "
            "the queue (reading and decoding the body, and waiting for the event loop).",
            MODEL_LABELS,
            registry=r,
        )
        self.request_queue_time = Counter(
            f"{PREFIX}_request_queue_seconds",
            "Summed time successful prediction requests waited in the batcher queue.",
            MODEL_LABELS,
            registry=r,
        )
        self.request_inference_time = Counter(
            f"{PREFIX}_request_inference_seconds",
            "ONNX Runtime time of the batch each successful request ran in, summed over requests "
            "(a batch of three requests counts three times).",
            MODEL_LABELS,
            registry=r,
        )
        self.request_answer_time = Counter(
            f"{PREFIX}_request_answer_seconds",
            "Summed time building the answers of successful prediction requests from their "
            "batch's rows.",
            MODEL_LABELS,
            registry=r,
        )
        self.request_inputs = Counter(
            f"{PREFIX}_request_inputs",
            "Inputs (images or tensors) of successful prediction requests.",
            MODEL_LABELS,
            registry=r,
        )
        self.batches_by_size = Counter(
            f"{PREFIX}_batches",
            "Batches run in ONNX Runtime (agreement samples' included), by their number of "
            "inputs (at most max_batch_size).",
            [*MODEL_LABELS, "batch_size"],
            registry=r,
        )
        self.batch_inference_by_size = Counter(
            f"{PREFIX}_batch_inference_seconds",
            "Summed ONNX Runtime time of batches, by their number of inputs.",
            [*MODEL_LABELS, "batch_size"],
            registry=r,
        )
        self.last_inference = Gauge(
            f"{PREFIX}_last_inference_timestamp_seconds",
            "When the version's last batch ran (Unix time; 0 before its first).",
            MODEL_LABELS,
            multiprocess_mode="max",  # a dead worker's last batch still happened
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Inputs waiting in the batcher queue.",
            MODEL_LABELS,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_capacity = Gauge(
            f"{PREFIX}_queue_capacity",
            "Maximum inputs the batcher queue accepts (max_queue_size).",
            MODEL_LABELS,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests",
            "Prediction requests being handled right now.",
            MODEL_LABELS,
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "Constant 1 per served model version, with its descriptive labels.",
            [*MODEL_LABELS, "method", "architecture", "precision", "provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when the model version is loaded and warm, else 0.",
            MODEL_LABELS,
            multiprocess_mode="livemin",
            registry=r,
        )
        self.routed = Counter(
            f"{PREFIX}_routed_requests",
            "Requests routed by objective instead of a model name, by objective and chosen model.",
            ["objective", "model"],
            registry=r,
        )
        pair = ["model", "reference"]
        self.agreement = Counter(
            f"{PREFIX}_agreement",
            "Sampled inputs re-run through the model's reference (its teacher): whether the "
            "two top-1 classes agree.",
            [*pair, "agree"],
            registry=r,
        )
        self.agreement_ratio = Gauge(
            f"{PREFIX}_agreement_ratio",
            "Share of the model's last 200 sampled inputs whose top-1 equals its reference's.",
            pair,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.agreement_top1_diff = Histogram(
            f"{PREFIX}_agreement_top1_prob_diff",
            "Absolute difference of the model's and its reference's top-1 probabilities.",
            pair,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
            registry=r,
        )
        self.offline_agreement = Gauge(
            f"{PREFIX}_model_offline_agreement",
            "Share of the test split on which the model's top-1 equals its teacher's (card).",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.agreement_dropped = Counter(
            f"{PREFIX}_agreement_samples_dropped",
            "Samples not re-run because the reference's queue had no room to spare.",
            pair,
            registry=r,
        )
        self.model_versions = Gauge(
            f"{PREFIX}_model_versions",
            "Versions of each model by state: 'ready' (served) or 'failed' (could not be loaded).",
            ["model", "state"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_top1 = Gauge(
            f"{PREFIX}_model_top1_accuracy",
            "Offline top-1 accuracy (fraction) measured with ONNX Runtime on the test split.",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_ece = Gauge(
            f"{PREFIX}_model_calibration_error",
            "Offline expected calibration error of the softmax scores on the test split (card).",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_params = Gauge(
            f"{PREFIX}_model_parameters",
            "Number of parameters of the model.",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.abandoned = Counter(
            f"{PREFIX}_abandoned_requests",
            "Requests whose client disconnected while they waited for their batch: their input "
            "was dropped from the queue (stage 'queued') or their answer discarded ('running').",
            [*MODEL_LABELS, "stage"],
            registry=r,
        )
        self.inference_restarts = Counter(
            f"{PREFIX}_inference_thread_restarts",
            "Inference threads restarted after a fault of the batcher itself (not of the model).",
            MODEL_LABELS,
            registry=r,
        )
        self.model_loads = Counter(
            f"{PREFIX}_model_loads",
            "Model loads and reloads at run time, by outcome (loaded or failed).",
            ["model", "outcome"],
            registry=r,
        )
        self.model_unloads = Counter(
            f"{PREFIX}_model_unloads",
            "Models unloaded at run time.",
            ["model"],
            registry=r,
        )
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures",
            "Model versions that could not be loaded (version '' when the whole model failed).",
            MODEL_LABELS,
            registry=r,
        )
        self.model_macs = Gauge(
            f"{PREFIX}_model_macs",
            "Multiply-accumulates per image.",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.intra_op_threads = Gauge(
            f"{PREFIX}_model_intra_op_threads",
            "ONNX Runtime intra-op threads of the version's session (chosen at load or set).",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )
        self.inference_workers = Gauge(
            f"{PREFIX}_model_inference_workers",
            "Batches the version runs at the same time (chosen at load or set).",
            MODEL_LABELS,
            multiprocess_mode="livemax",
            registry=r,
        )

    @property
    def multiprocess(self) -> bool:
        """Whether a scrape merges the metric files of several worker processes."""
        return self._scraped is not self.registry

    def families(self, *metrics: MetricWrapperBase) -> Iterable[Metric]:
        """The values of ``metrics`` as a scrape sees them: this process's, or every worker's
        merged (their files are all read: a scrape's cost)."""
        if not self.multiprocess:
            for metric in metrics:
                yield from metric.collect()
            return
        names = {metric._name for metric in metrics}
        for family in self._scraped.collect():
            if family.name in names:
                yield family

    def flush(self) -> None:
        """Write this process's gathered sums (``Deferred``) to their metrics: on the event loop,
        before they are read."""
        for deferred in list(self.deferred):
            deferred.flush()

    def exposition(self, derived: Callable[[list[Metric]], bytes] | None = None) -> bytes:
        """Prometheus text of the service: this registry, or every worker's files merged (each
        worker's gathered sums at most FLUSH_S old); then the text ``derived`` writes from
        those families (Triton's metric names), from the same read."""
        self.flush()
        if derived is None:
            return generate_latest(self._scraped)
        families = list(self._scraped.collect())
        return generate_latest(_Collected(families)) + derived(families)


class _Collected:
    """Families already collected, as ``generate_latest`` reads a registry."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        """The families, as collected."""
        return self.families


class ModelRequestMetrics(Deferred):
    """One model version's request metrics, their labelled children resolved once.

    ``labels()`` builds a key and looks it up under a lock on every call; the /predict hot path
    would call it three or four times per request. The statistics' sums of successful requests
    (inputs, phases) are gathered and written at most FLUSH_S later (``Deferred``).
    """

    def __init__(self, metrics: ServiceMetrics, name: str, version: str) -> None:
        super().__init__(metrics)
        self._requests = metrics.requests
        self._labels = (name, version)
        self._by_status: dict[int, Any] = {
            status: self._requests.labels(name, version, str(status))
            for status in STARTING_STATUSES
        }
        self.latency = metrics.request_latency.labels(name, version)
        self.in_flight = metrics.in_flight.labels(name, version)
        self._failure_time = metrics.request_failure_time.labels(name, version)
        self._phases = tuple(
            counter.labels(name, version)
            for counter in (
                metrics.request_decode_time,
                metrics.request_queue_time,
                metrics.request_inference_time,
                metrics.request_answer_time,
            )
        )
        self._inputs = metrics.request_inputs.labels(name, version)
        self._sums = [0.0] * (1 + len(self._phases))  # inputs, then each phase's seconds

    def count(self, status: int, seconds: float) -> None:
        """One finished request: its status counted and, when it succeeded, its end-to-end
        latency observed (a flood of cheap 4xx must not pull the latency SLO's p99 down, nor
        timeouts push it up: the error ratio watches those); a failure's time is summed apart."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(*self._labels, str(status))
        child.inc()
        if status < 300:
            self.latency.observe(seconds)
        else:
            self._failure_time.inc(seconds)

    def succeeded(
        self, inputs: int, seconds: float, phases: tuple[float, float, float, float]
    ) -> None:
        """One successful request of ``inputs`` inputs, ``seconds`` end to end, and its phases:
        decoding, queue wait, its batch's inference and building its answer (seconds)."""
        self.count(200, seconds)
        sums = self._sums
        sums[0] += inputs
        sums[1] += phases[0]
        sums[2] += phases[1]
        sums[3] += phases[2]
        sums[4] += phases[3]
        self._gathered()

    def _write(self) -> None:
        sums, self._sums = self._sums, [0.0] * len(self._sums)
        if sums[0]:
            self._inputs.inc(sums[0])
            for counter, seconds in zip(self._phases, sums[1:], strict=True):
                counter.inc(seconds)
