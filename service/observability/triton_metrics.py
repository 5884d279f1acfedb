"""Triton's Prometheus metric names (``nv_inference_*``), derived at each scrape from the service's.

Dashboards and alerts written for Triton query ``nv_inference_request_success``,
``nv_inference_queue_duration_us`` and their kin, per ``model`` and ``version``. With
``triton_metric_names`` on, ``/metrics`` adds them, computed from the same read of the service's
metrics as the statistics extension's figures (``service.observability.statistics``), so the two
always agree, and with several worker processes they are the whole service's. As in Triton, they
are counters without a ``_total`` suffix, durations in microseconds, and:

- ``nv_inference_request_success`` / ``_failure``: requests answered 2xx / otherwise;
- ``nv_inference_count``: inputs inferred (a request of three images counts three);
- ``nv_inference_exec_count``: batches run (several requests batched together count once);
- ``nv_inference_request_duration_us``: the end-to-end time of every request, failed ones too;
- ``nv_inference_queue_duration_us``, ``nv_inference_compute_input_duration_us``,
  ``nv_inference_compute_infer_duration_us``, ``nv_inference_compute_output_duration_us``: the
  successful requests' time waiting in the queue, reading and decoding their input, in their
  batch's ONNX Runtime call, and building the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.metrics_core import Metric

from service.observability.statistics import Figures

_Stats = dict[str, Any]

# name, help (Triton's wording where it has one), the value from a statistics entry
COUNTERS: tuple[tuple[str, str, Callable[[_Stats], float]], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda e: e["inference_stats"]["success"]["count"],
    ),
    (
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        lambda e: e["inference_stats"]["fail"]["count"],
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
        "Cumulative end-to-end inference request handling time (microseconds)",
        lambda e: (
            (e["inference_stats"]["success"]["ns"] + e["inference_stats"]["fail"]["ns"]) / 1e3
        ),
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration of successful requests (microseconds)",
        lambda e: e["inference_stats"]["queue"]["ns"] / 1e3,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration of successful requests (microseconds)",
        lambda e: e["inference_stats"]["compute_input"]["ns"] / 1e3,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration of successful requests (microseconds)",
        lambda e: e["inference_stats"]["compute_infer"]["ns"] / 1e3,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration of successful requests (microseconds)",
        lambda e: e["inference_stats"]["compute_output"]["ns"] / 1e3,
    ),
)


def triton_families(families: list[Metric]) -> list[Metric]:
    """Triton's counters of every model version the service's ``families`` count requests of."""
    figures = Figures(families, None)
    # requests refused before a model was chosen carry no version: not a model's figures
    entries = [figures.entry(key) for key in sorted(figures.versions) if key[0] and key[1]]
    derived = []
    for name, help_text, value in COUNTERS:
        family = Metric(name, help_text, "counter")
        for entry in entries:
            labels = {"model": entry["name"], "version": entry["version"]}
            family.add_sample(name, labels, float(value(entry)))
        derived.append(family)
    return derived
