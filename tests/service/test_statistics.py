"""Triton's statistics extension, over REST and gRPC, read by tritonclient from a real uvicorn.

The figures are what ``perf_analyzer`` splits a request's server time with: each request's queue,
input, inference and output times must lie within its end-to-end time, the counts must be those
of the requests sent, and the gRPC answer must be the REST one field for field (read into
Triton's own messages, which also proves the field numbers). Several workers' figures summing
into one answer is tested beside the metrics they are read from
(tests/service/test_multiprocess_metrics.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from tests.service.test_grpc_protocol import fp32_input
from tests.service.test_v2_protocol import tensor
from tests.support.server import free_port, running_service

MODEL = "digits-logreg"
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def test_figures_are_read_from_the_metrics_of_the_version_asked_about() -> None:
    metrics = ServiceMetrics()
    one = ModelRequestMetrics(metrics, "m", "1")
    one.succeeded(3, 0.5, (0.1, 0.125, 0.25, 0.0625))
    one.count(400, 0.25)
    one.count(499, 0.25)
    ModelRequestMetrics(metrics, "m", "10").succeeded(1, 9.0, (1, 1, 1, 1))  # not "1"'s
    metrics.batches_by_size.labels("m", "1", "3").inc(2)
    metrics.batch_inference_by_size.labels("m", "1", "3").inc(0.5)
    metrics.batches_by_size.labels("m", "1", "1").inc()
    metrics.batch_inference_by_size.labels("m", "1", "1").inc(0.125)
    [stats] = model_statistics(metrics, [("m", "1")])
    inference = stats["inference_stats"]
    assert (stats["name"], stats["version"], stats["inference_count"]) == ("m", "1", 3)
    assert inference["success"] == {"count": 1, "ns": 500_000_000}
    assert inference["fail"] == {"count": 2, "ns": 500_000_000}
    assert inference["compute_input"] == {"count": 1, "ns": 100_000_000}
    assert inference["queue"] == {"count": 1, "ns": 125_000_000}
    assert inference["compute_infer"] == {"count": 1, "ns": 250_000_000}
    assert inference["compute_output"] == {"count": 1, "ns": 62_500_000}
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
        "ROCKETSERVE_AGREEMENT_SAMPLE_RATE": "0",  # quiet between two reads (tested apart)
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
        # run in a batch, then refused: outputs that are not finite (inputs far out of range)
        huge = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                            "data": [3e38] * 64}]}  # fmt: skip
        assert http.post(f"/v2/models/{MODEL}/versions/1/infer", json=huge).status_code == 422
    for i in range(5):
        grpc_client.infer(MODEL, [fp32_input(tensor(2, seed=20 + i))], "1")
    pixels = grpcclient.InferInput("input", [1, 1, 8, 8], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(InferenceServerException):
        grpc_client.infer(MODEL, [pixels], "1")

    after = only(rest.get_inference_statistics(MODEL, "1"))
    assert (after["name"], after["version"]) == (MODEL, "1")
    assert grew(after, before, "success")["count"] == 15
    assert grew(after, before, "fail")["count"] == 4  # 3 refused by the checks, 1 after its run
    for phase in PHASES:  # the successes only, as Triton counts them
        assert grew(after, before, phase)["count"] == 15, phase
    assert after["inference_count"] - before["inference_count"] == 10 + 5 * 2
    executions = after["execution_count"] - before["execution_count"]
    assert 2 <= executions <= 16
    # every input was inferred in one batch of the sizes listed (the 422's too), and every batch
    # is listed (the version served nothing before this test)
    sizes = {b["batch_size"]: b["compute_infer"] for b in after["batch_stats"]}
    assert sum(size * d["count"] for size, d in sizes.items()) == after["inference_count"] + 1
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


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reads_under_load_have_one_count_for_every_phase(
    server: tuple[str, str], grpc_client: grpcclient.InferenceServerClient
) -> None:
    """perf_analyzer reads the statistics while its load runs and gives up on a report whose
    compute counts differ: every read, taken between any two requests, has one count."""
    stop = threading.Event()

    def load(seed: int) -> int:
        sent = 0
        with httpx.Client(base_url=server[0]) as http:
            while not stop.is_set():
                x = tensor(1 + seed % 3, seed=seed)
                body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                    "data": x.ravel().tolist()}]}  # fmt: skip
                assert http.post(f"/v2/models/{MODEL}/infer", json=body).status_code == 200
                sent += 1
        return sent

    reads = []
    with ThreadPoolExecutor(8) as pool:
        senders = [pool.submit(load, seed) for seed in range(8)]
        for _ in range(15):
            time.sleep(0.05)
            reads.append(only(grpc_client.get_inference_statistics(MODEL, "2", as_json=True)))
        stop.set()
        sent = sum(f.result() for f in senders)
    assert sent > 15
    counts = [
        {int(r["inference_stats"][k].get("count", 0)) for k in ("success", *PHASES)} for r in reads
    ]
    assert all(len(c) == 1 for c in counts), counts
    assert len({c.pop() for c in counts}) > 1  # the reads were taken while requests were answered
