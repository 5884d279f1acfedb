"""Triton's metric names on /metrics: the statistics extension's figures under nv_inference_*.

A dashboard written for Triton must read the same numbers that Triton's statistics API (and
``perf_analyzer``) reads, per model and version, from a real uvicorn, in Prometheus' text format.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.observability.triton_metrics import COUNTERS, triton_text
from tests.service.test_v2_protocol import tensor
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def nv(text: str) -> dict[tuple[str, ...], float]:
    """Every nv_* sample: (name, model, version[, reason]) -> value; parsing checks the text
    format."""
    return {
        (  # prometheus-client's parser names a counter's samples <name>_total; the text does not
            s.name.removesuffix("_total"),
            s.labels["model"],
            s.labels["version"],
            *[s.labels[k] for k in ("reason",) if k in s.labels],
        ): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("nv_")
        for s in family.samples
    }


def test_each_counter_is_the_statistics_figure_in_tritons_unit_and_type() -> None:
    metrics = ServiceMetrics()
    one = ModelRequestMetrics(metrics, "m", "1")
    one.succeeded(3, 0.5, (0.1, 0.125, 0.25, 0.0625))
    for status in (400, 504, 503, 499, 500, 500):
        one.count(status, 0.25)
    metrics.batch_size.labels("m", "1").observe(3)
    metrics.flush()
    text = metrics.exposition(triton_text).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    got = {
        (s.name.removesuffix("_total"), *sorted(s.labels.items())): s.value  # (the parser's)
        for name, family in families.items()
        if name.startswith("nv_")
        for s in family.samples
    }
    mv = (("model", "m"), ("version", "1"))
    assert got == {
        ("nv_inference_request_success", *mv): 1,
        ("nv_inference_count", *mv): 3,
        ("nv_inference_exec_count", *mv): 1,
        ("nv_inference_request_duration_us", *mv): 500_000,  # successful requests only
        ("nv_inference_compute_input_duration_us", *mv): 100_000,
        ("nv_inference_queue_duration_us", *mv): 125_000,
        ("nv_inference_compute_infer_duration_us", *mv): 250_000,
        ("nv_inference_compute_output_duration_us", *mv): 62_500,
        (
            "nv_inference_request_failure",
            ("model", "m"),
            ("reason", "BACKEND"),
            ("version", "1"),
        ): 2,
        (
            "nv_inference_request_failure",
            ("model", "m"),
            ("reason", "CANCELED"),
            ("version", "1"),
        ): 1,
        ("nv_inference_request_failure", ("model", "m"), ("reason", "OTHER"), ("version", "1")): 2,
        (
            "nv_inference_request_failure",
            ("model", "m"),
            ("reason", "REJECTED"),
            ("version", "1"),
        ): 1,
    }
    # Each a counter of Triton's very name (no _total), with its HELP and TYPE lines.
    nv = {name: f for name, f in families.items() if name.startswith("nv_")}
    assert len(nv) == len(COUNTERS) + 1 and all(f.type == "counter" for f in nv.values())
    assert "# TYPE nv_inference_request_success counter" in text and "_total" not in "".join(
        line for line in text.splitlines() if "nv_" in line
    )
    promtool = shutil.which("promtool")  # the Prometheus package's linter, as CI installs it
    if promtool is not None:
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        # Only the naming conventions Triton's own names break: no parse error, no missing help.
        said = [line for line in (lint.stdout + lint.stderr).splitlines() if "nv_" in line]
        tolerated = ('"_total" suffix', "abbreviated units", '"_count" suffix')
        assert said and all(any(t in line for t in tolerated) for line in said), said


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
        failed = scraped[("nv_inference_request_failure", *key, "OTHER")]  # a bad input: 400
        assert failed == inference["fail"]["count"] == 1
        assert scraped[("nv_inference_count", *key)] == stats["inference_count"] == 10
        assert scraped[("nv_inference_exec_count", *key)] == stats["execution_count"] >= 1
        phases = ("queue", "compute_input", "compute_infer", "compute_output")
        for phase in phases:  # (a lone request to this tiny model runs inline: no queue)
            got = scraped[(f"nv_inference_{phase}_duration_us", *key)]
            assert got == pytest.approx(inference[phase]["ns"] / 1e3), phase
        assert sum(scraped[(f"nv_inference_{p}_duration_us", *key)] for p in phases) > 0
        total = inference["success"]["ns"]  # Triton times successful requests only
        assert scraped[("nv_inference_request_duration_us", *key)] == pytest.approx(total / 1e3)
        assert ("nv_inference_request_success", "digits-slow", "1") in scraped  # idle: 0
    with running_service(digits_repo, {**env, "ROCKETSERVE_TRITON_METRIC_NAMES": "false"}) as (
        url,
        _,
    ):
        text = httpx.get(f"{url}/metrics").text
        assert "rocketserve_requests_total" in text and "nv_inference" not in text
