"""Triton's Prometheus metric names (``nv_inference_*``), derived at each scrape from the service's.

Dashboards and alerts written for Triton query ``nv_inference_request_success``,
``nv_inference_queue_duration_us`` and their kin, per ``model`` and ``version``. With
``triton_metric_names`` on, ``/metrics`` adds them, computed from the same read of the service's
metrics as the statistics extension's figures (``service.observability.statistics``), so the two
always agree, and with several worker processes they are the whole service's. As in Triton, they
are counters named without a ``_total`` suffix (written here as text: prometheus-client would
add one), durations in microseconds, and:

- ``nv_inference_request_success``: requests answered 2xx;
- ``nv_inference_request_failure``: the others, by ``reason`` as Triton labels them:
  ``REJECTED`` (503: the queue full, overload, shutting down), ``CANCELED`` (499: the client
  left), ``BACKEND`` (500: the model's run failed), ``OTHER`` (the rest: bad input, deadline);
- ``nv_inference_count``: inputs inferred (a request of three images counts three);
- ``nv_inference_exec_count``: batches run (several requests batched together count once);
- ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
  ``nv_inference_compute_input_duration_us``, ``nv_inference_compute_infer_duration_us``,
  ``nv_inference_compute_output_duration_us``: the successful requests' end-to-end time, and
  their time waiting in the queue, reading and decoding their input, in their batch's ONNX
  Runtime call, and building the answer (Triton, too, times only successful requests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from service.observability.statistics import Figures, Version

_Stats = dict[str, Any]
FAILURE = "nv_inference_request_failure"
REASONS = {"503": "REJECTED", "499": "CANCELED", "500": "BACKEND"}  # any other status: OTHER


def _us(phase: str) -> Callable[[_Stats], float]:
    return lambda e: e["inference_stats"][phase]["ns"] / 1e3


# name, help (Triton's wording where it has one), the value from a statistics entry
COUNTERS: tuple[tuple[str, str, Callable[[_Stats], float]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda e: e["inference_stats"]["success"]["count"],
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (a request of N inputs counts N)",
        lambda e: e["inference_count"],
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (batches run)",
        lambda e: e["execution_count"],
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (successful requests)",
        _us("success"),
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (successful requests)",
        _us("queue"),
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (successful requests)",
        _us("compute_input"),
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (successful requests)",
        _us("compute_infer"),
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (successful requests)",
        _us("compute_output"),
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {floatToGoString(value)}\n"


def _family(name: str, help_text: str, samples: list[str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} counter\n" + "".join(samples)


def failures_by_reason(figures: Figures, key: Version) -> dict[str, float]:
    """The version's failed requests by Triton's failure reason."""
    reasons: dict[str, float] = {}
    for status, count in sorted(figures.failed_by_status.get(key, {}).items()):
        reason = REASONS.get(status, "OTHER")
        reasons[reason] = reasons.get(reason, 0.0) + count
    return reasons


def triton_text(families: list[Metric]) -> bytes:
    """Triton's counters, as exposition text, of every model version the service's
    ``families`` count requests of."""
    figures = Figures(families, None)
    # requests refused before a model was chosen carry no version: not a model's figures
    keys = [key for key in sorted(figures.versions) if key[0] and key[1]]
    entries = [(key, figures.entry(key)) for key in keys]
    out = []
    for name, help_text, value in COUNTERS:
        samples = [
            _sample(name, {"model": k[0], "version": k[1]}, float(value(e))) for k, e in entries
        ]
        out.append(_family(name, help_text, samples))
    failures = [
        _sample(FAILURE, {"model": k[0], "version": k[1], "reason": reason}, count)
        for k in keys
        for reason, count in failures_by_reason(figures, k).items()
    ]
    out.append(_family(FAILURE, "Number of failed inference requests, all batch sizes", failures))
    return "".join(out).encode()
