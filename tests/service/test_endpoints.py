"""/models, /healthz, /readyz, /metrics and the OpenAPI docs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.contract.model_card import read_manifest
from service.http.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.timeout(60)

TENSOR = np.zeros((1, 8, 8)).tolist()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text to {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_models_describe_versions_figures_and_live_latency(
    client: httpx.AsyncClient, digits_repo: Path
) -> None:
    for _ in range(3):
        assert (await client.post("/predict", json={"tensor": TENSOR})).status_code == 200
    r = await client.get("/models")
    assert r.status_code == 200
    listing = r.json()
    assert listing["default_model"] == "digits-logreg"
    assert [m["name"] for m in listing["models"]] == ["digits-logreg", "digits-slow"]

    model = (await client.get("/models/digits-logreg")).json()
    card = read_manifest(digits_repo / "digits-logreg")
    assert model["default_version"] == 2
    assert model["labels"] == list(card.labels)
    assert model["input"]["shape"] == [1, 8, 8] and model["input"]["color"] == "gray"
    assert (model["params"], model["macs"]) == (card.params, card.macs)
    assert model["training"]["method"] == "baseline"
    v1, v2 = model["versions"]
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v2["provider"] == "CPUExecutionProvider" and v2["ready"] is True
    assert v2["offline"]["metrics"]["top1"] == card.metrics.top1
    assert v2["offline"]["profile"]["rows"][0]["batch_size"] == 1
    assert v1["offline"]["metrics"] is None  # the card's figures were measured on v2 only
    assert v2["live"]["requests"] == 3
    assert 0 < v2["live"]["p50_ms"] <= v2["live"]["p99_ms"]
    assert v1["live"] == {"requests": 0, "p50_ms": None, "p99_ms": None}


async def test_health_and_readiness(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")  # lifespan not run: nothing loaded
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = await c.post("/predict", json={"tensor": TENSOR})
        assert r.status_code == 503
        async with app.router.lifespan_context(app):
            r = await c.get("/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ready", "models": 3}
        r = await c.get("/readyz")  # shut down: not ready any more
        assert r.status_code == 503


async def test_metrics_count_requests_batches_and_describe_models(
    client: httpx.AsyncClient, digits_repo: Path
) -> None:
    await client.post("/predict", json={"tensor": TENSOR})
    await client.post("/predict", json={"tensor": np.zeros((3, 1, 8, 8)).tolist()})
    await client.post("/predict?model=digits-slow", json={"tensor": TENSOR})
    await client.post("/predict?model=nope", json={"tensor": TENSOR})
    await client.post("/predict", json={"tensor": [1]})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)

    def get(name: str, **labels: str) -> float:
        return m[(name, tuple(sorted(labels.items())))]

    p = "rocketserve_"
    lr2 = {"model": "digits-logreg", "version": "2"}
    assert get(p + "requests_total", status="200", **lr2) == 2
    assert get(p + "requests_total", status="422", **lr2) == 1
    assert get(p + "requests_total", model="unknown", version="", status="404") == 1
    assert get(p + "requests_total", model="digits-slow", version="1", status="200") == 1
    # the two answered requests are timed, the 422 is not (the latency SLO is on answers)
    assert get(p + "request_latency_seconds_count", **lr2) == 2
    # cumulative buckets: neither took over 10 s, and the 100 us one holds fewer
    assert get(p + "request_latency_seconds_bucket", le="10.0", **lr2) == 2
    assert get(p + "request_latency_seconds_bucket", le="0.0001", **lr2) <= 2
    # every version starts its refusal statuses at 0, so that rate() sees their first
    assert get(p + "requests_total", status="503", **lr2) == 0
    assert get(p + "requests_total", status="504", model="digits-slow", version="1") == 0
    assert get(p + "batch_size_count", **lr2) == 2 and get(p + "batch_size_sum", **lr2) == 4
    assert get(p + "batch_size_bucket", le="2.0", **lr2) == 1  # the 1-input batch
    assert get(p + "inference_seconds_count", **lr2) == 2
    assert get(p + "queue_wait_seconds_count", **lr2) == 2
    assert get(p + "queue_depth", **lr2) == 0
    assert get(p + "in_flight_requests", **lr2) == 0
    assert get(p + "queue_capacity", **lr2) == 512
    card = read_manifest(digits_repo / "digits-logreg")
    info = {
        **lr2,
        "method": "baseline",
        "architecture": card.training.architecture,
        "precision": "fp32",
        "provider": "CPUExecutionProvider",
    }
    assert get(p + "model_info", **info) == 1
    assert get(p + "model_ready", **lr2) == 1
    assert get(p + "model_top1_accuracy", **lr2) == pytest.approx(card.metrics.top1)
    assert card.metrics.ece is not None and 0 < card.metrics.ece < 1
    assert get(p + "model_calibration_error", **lr2) == pytest.approx(card.metrics.ece)
    assert get(p + "model_parameters", **lr2) == card.params
    assert get(p + "model_macs", **lr2) == card.macs


async def test_metrics_are_per_app(make_settings: Callable[..., Settings]) -> None:
    a, b = create_app(make_settings()), create_app(make_settings())
    assert a.state.service.metrics.registry is not b.state.service.metrics.registry


async def test_openapi_documents_predict_with_examples(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json", "image/*"}
    assert set(body["application/json"]["examples"]) == {"image", "images", "tensor"}
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "422", "503", "504"} <= set(responses)
    assert {"/models", "/models/{name}", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
