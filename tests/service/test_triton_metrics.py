"""Triton's metric names on /metrics: the statistics extension's figures under nv_inference_*.

A dashboard written for Triton must read the same numbers that Triton's statistics API (and
``perf_analyzer``) reads, per model and version, from a real uvicorn, in Prometheus' text format.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.observability.triton_metrics import COUNTERS, triton_families
from tests.service.test_v2_protocol import tensor
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def nv(text: str) -> dict[tuple[str, str, str], float]:
    """Every nv_* sample: (name, model, version) -> value; parsing checks the text format."""
    return {
        (s.name, s.labels["model"], s.labels["version"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("nv_")
        for s in family.samples
    }


def test_each_counter_is_the_statistics_figure_in_tritons_unit() -> None:
    metrics = ServiceMetrics()
    one = ModelRequestMetrics(metrics, "m", "1")
    one.succeeded(3, 0.5, (0.1, 0.125, 0.25, 0.0625))
    one.count(400, 0.25)
    metrics.batch_size.labels("m", "1").observe(3)
    metrics.flush()
    families = list(metrics.registry.collect())
    got = {
        (s.name, s.labels["model"], s.labels["version"]): s.value
        for family in triton_families(families)
        for s in family.samples
    }
    assert got == {
        ("nv_inference_request_success", "m", "1"): 1,
        ("nv_inference_request_failure", "m", "1"): 1,
        ("nv_inference_count", "m", "1"): 3,
        ("nv_inference_exec_count", "m", "1"): 1,
        ("nv_inference_request_duration_us", "m", "1"): 750_000,
        ("nv_inference_compute_input_duration_us", "m", "1"): 100_000,
        ("nv_inference_queue_duration_us", "m", "1"): 125_000,
        ("nv_inference_compute_infer_duration_us", "m", "1"): 250_000,
        ("nv_inference_compute_output_duration_us", "m", "1"): 62_500,
    }
    assert [f.type for f in triton_families(families)] == ["counter"] * len(COUNTERS)


def test_a_scrape_carries_the_figures_the_statistics_api_answers(digits_repo: Path) -> None:
    env = {"ROCKETSERVE_AGREEMENT_SAMPLE_RATE": "0", "ROCKETSERVE_LOG_LEVEL": "warning"}
    with running_service(digits_repo, env) as (url, _):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                            "data": tensor(2).ravel().tolist()}]}  # fmt: skip
        for _ in range(5):
            assert httpx.post(f"{url}/v2/models/digits-logreg/infer", json=body).status_code == 200
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        assert httpx.post(f"{url}/v2/models/digits-logreg/infer", json=bad).status_code == 400
        stats = httpx.get(f"{url}/v2/models/digits-logreg/stats").json()["model_stats"][0]
        scraped = nv(httpx.get(f"{url}/metrics").text)
        # nothing ran between the two reads: each counter is the statistics figure
        key = ("digits-logreg", stats["version"])
        inference = stats["inference_stats"]
        assert scraped[("nv_inference_request_success", *key)] == inference["success"]["count"] == 5
        assert scraped[("nv_inference_request_failure", *key)] == inference["fail"]["count"] == 1
        assert scraped[("nv_inference_count", *key)] == stats["inference_count"] == 10
        assert scraped[("nv_inference_exec_count", *key)] == stats["execution_count"] >= 1
        phases = ("queue", "compute_input", "compute_infer", "compute_output")
        for phase in phases:  # (a lone request to this tiny model runs inline: no queue)
            got = scraped[(f"nv_inference_{phase}_duration_us", *key)]
            assert got == pytest.approx(inference[phase]["ns"] / 1e3), phase
        assert sum(scraped[(f"nv_inference_{p}_duration_us", *key)] for p in phases) > 0
        total = inference["success"]["ns"] + inference["fail"]["ns"]
        assert scraped[("nv_inference_request_duration_us", *key)] == pytest.approx(total / 1e3)
        assert ("nv_inference_request_success", "digits-slow", "1") in scraped  # idle: 0
    with running_service(digits_repo, {**env, "ROCKETSERVE_TRITON_METRIC_NAMES": "false"}) as (
        url,
        _,
    ):
        text = httpx.get(f"{url}/metrics").text
        assert "rocketserve_requests_total" in text and "nv_inference" not in text
