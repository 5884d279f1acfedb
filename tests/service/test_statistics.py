"""Triton's statistics extension, over REST and gRPC, read by tritonclient from a real uvicorn.

The figures are what ``perf_analyzer`` splits a request's server time with: each request's queue,
input, inference and output times must lie within its end-to-end time, the counts must be those
of the requests sent, and the gRPC answer must be the REST one field for field (read into
Triton's own messages, which also proves the field numbers). Several workers' figures summing
into one answer is tested beside the metrics they are read from
(tests/service/test_multiprocess_metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.observability.statistics import model_statistics
from tests.service.test_v2_protocol import tensor
from tests.support.server import free_port, running_service

MODEL = "digits-logreg"
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def test_figures_are_read_from_the_metrics_of_the_version_asked_about() -> None:
    metrics = ServiceMetrics()
    one = ModelRequestMetrics(metrics, "m", "1")
    one.count(200, 0.5)
    one.phases(0.1, 0.05)
    one.count(400, 0.25)
    one.count(499, 0.25)
    ModelRequestMetrics(metrics, "m", "10").count(200, 9.0)  # "1" must not read "10"'s
    metrics.batches_by_size.labels("m", "1", "3").inc(2)
    metrics.batch_inference_by_size.labels("m", "1", "3").inc(0.5)
    metrics.batches_by_size.labels("m", "1", "1").inc()
    metrics.batch_inference_by_size.labels("m", "1", "1").inc(0.125)
    [stats] = model_statistics(metrics, [("m", "1")])
    inference = stats["inference_stats"]
    assert (stats["name"], stats["version"]) == ("m", "1")
    assert inference["success"] == {"count": 1, "ns": 500_000_000}
    assert inference["fail"] == {"count": 2, "ns": 500_000_000}
    assert inference["compute_input"] == {"count": 1, "ns": 100_000_000}
    assert inference["compute_output"] == {"count": 1, "ns": 50_000_000}
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert stats["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 1, "ns": 125_000_000}},
        {"batch_size": 3, "compute_infer": {"count": 2, "ns": 500_000_000}},
    ]
    [idle] = model_statistics(metrics, [("other", "1")])
    assert idle["execution_count"] == idle["last_inference"] == 0 and not idle["batch_stats"]


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[tuple[str, str]]:
    """The service with both protocols; (REST url, gRPC host:port)."""
    port = free_port()
    env = {
        "ROCKETSERVE_GRPC_PORT": str(port),
        "ROCKETSERVE_VERSION_POLICY": "all",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(digits_repo, env) as (url, _):
        yield url, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def grpc_client(server: tuple[str, str]) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def rest(server: tuple[str, str]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    yield c
    c.close()


def only(stats: dict[str, Any]) -> dict[str, Any]:
    [entry] = stats["model_stats"]
    return entry  # type: ignore[no-any-return]


def grew(after: dict[str, Any], before: dict[str, Any], field: str) -> dict[str, int]:
    a, b = after["inference_stats"][field], before["inference_stats"][field]
    return {"count": a["count"] - b["count"], "ns": a["ns"] - b["ns"]}


def fp32(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_requests_served_are_counted_and_timed_as_perf_analyzer_reads_them(
    server: tuple[str, str],
    grpc_client: grpcclient.InferenceServerClient,
    rest: httpclient.InferenceServerClient,
) -> None:
    started_ms = time.time() * 1000
    before = only(rest.get_inference_statistics(MODEL, "1"))
    with httpx.Client(base_url=server[0]) as http:
        for i in range(10):
            x = tensor(1, seed=i)
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                "data": x.ravel().tolist()}]}  # fmt: skip
            assert http.post(f"/v2/models/{MODEL}/versions/1/infer", json=body).status_code == 200
        wrong = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 7],
                             "data": [0.0] * 56}]}  # fmt: skip
        for _ in range(2):
            assert http.post(f"/v2/models/{MODEL}/versions/1/infer", json=wrong).status_code == 400
    for i in range(5):
        grpc_client.infer(MODEL, [fp32(tensor(2, seed=20 + i))], "1")
    pixels = grpcclient.InferInput("input", [1, 1, 8, 8], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(InferenceServerException):
        grpc_client.infer(MODEL, [pixels], "1")

    after = only(rest.get_inference_statistics(MODEL, "1"))
    assert (after["name"], after["version"]) == (MODEL, "1")
    assert grew(after, before, "success")["count"] == 15
    assert grew(after, before, "fail")["count"] == 3  # refused by the checks: never queued
    for phase in ("queue", "compute_infer"):
        assert grew(after, before, phase)["count"] == 15, phase
    for phase in ("compute_input", "compute_output"):
        assert grew(after, before, phase)["count"] == 15, phase
    assert after["inference_count"] - before["inference_count"] == 10 + 5 * 2
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= 15
    # every input was inferred in one batch of the sizes listed, and every batch is listed
    sizes = {b["batch_size"]: b["compute_infer"] for b in after["batch_stats"]}
    assert sum(size * d["count"] for size, d in sizes.items()) == after["inference_count"]
    assert sum(d["count"] for d in sizes.values()) == after["execution_count"]
    assert sum(d["ns"] for d in sizes.values()) > 0
    # each request's phases lie within its end-to-end time: perf_analyzer's "overhead" >= 0
    success = grew(after, before, "success")
    phases = [grew(after, before, phase)["ns"] for phase in PHASES]
    assert all(ns >= 0 for ns in phases) and phases[PHASES.index("compute_infer")] > 0
    assert success["ns"] >= sum(phases), (success, dict(zip(PHASES, phases, strict=True)))
    assert grew(after, before, "fail")["ns"] > 0
    assert started_ms - 1000 <= after["last_inference"] <= time.time() * 1000 + 1000

    # the gRPC answer is the REST one, read into Triton's own messages (nothing ran in between)
    for name, version in ((MODEL, "1"), (MODEL, ""), ("", "")):
        over_rest = rest.get_inference_statistics(name, version)
        over_grpc = grpc_client.get_inference_statistics(name, version)
        assert over_grpc == json_format.ParseDict(over_rest, service_pb2.ModelStatisticsResponse())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_served_version_is_listed_and_an_unknown_one_is_not_found(
    server: tuple[str, str],
    grpc_client: grpcclient.InferenceServerClient,
    rest: httpclient.InferenceServerClient,
) -> None:
    assert "statistics" in rest.get_server_metadata()["extensions"]
    assert "statistics" in grpc_client.get_server_metadata().extensions
    index = httpx.post(server[0] + "/v2/repository/index", json={"ready": True}).json()
    served = sorted((m["name"], m["version"]) for m in index)
    listed = [(m["name"], m["version"]) for m in rest.get_inference_statistics()["model_stats"]]
    assert sorted(listed) == served and len(listed) >= 3
    versions = rest.get_inference_statistics(MODEL)["model_stats"]
    assert [m["version"] for m in versions] == ["1", "2"]
    for name, version, words in (("nope", "", "unknown model 'nope'"), (MODEL, "9", "no version")):
        with pytest.raises(InferenceServerException) as caught:
            rest.get_inference_statistics(name, version)
        assert caught.value.status() == "404" and words in str(caught.value)
        with pytest.raises(InferenceServerException) as caught:
            grpc_client.get_inference_statistics(name, version)
        assert caught.value.status() == "StatusCode.NOT_FOUND" and words in str(caught.value)
