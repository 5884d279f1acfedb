"""Routing by objective on a real uvicorn: a fast student and a slow, more accurate teacher."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.repository.routing import Objective, parse_objective
from tests.service.test_endpoints import samples
from tests.support.server import running_service
from tests.support.zoo import smallest_student, teacher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
# The int8 student with the fewest MACs and the fp32 teacher (27M and 328M MACs today).
FAST, SLOW = smallest_student().name, teacher().name
# The router names a model's served version: name:version.
FAST_KEY = f"{FAST}:{smallest_student().version}"
SLOW_KEY = f"{SLOW}:{teacher().version}"
JPEG = (ROOT / "loadtest/data/cifar10/cat_0000.jpg").read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, dict]]:
    repo = tmp_path_factory.mktemp("routing")
    for name in (FAST, SLOW):
        shutil.copytree(ROOT / "models" / name, repo / name)
    env = {"ROCKETSERVE_LOG_LEVEL": "warning"}
    with running_service(repo, env) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        yield client, models


def predicted(models: dict, name: str) -> float:
    return models[name]["versions"][-1]["routing"]["predicted_p99_ms"]


def post(client: httpx.Client, query: str) -> httpx.Response:
    return client.post("/predict?" + query, content=JPEG, headers={"content-type": "image/jpeg"})


def test_tight_budget_routes_to_the_fast_model(served: tuple[httpx.Client, dict]) -> None:
    client, models = served
    fast, slow = predicted(models, FAST), predicted(models, SLOW)
    assert fast < slow  # the student is predicted faster before any traffic
    budget = (fast + slow) / 2
    r = post(client, f"latency_budget_ms={budget:.3f}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == FAST
    routing = body["routing"]
    assert routing["chosen"] == FAST_KEY and routing["predicted_p99_ms"] <= budget
    assert routing["objective"] == {"latency_budget_ms": pytest.approx(budget, abs=1e-3)}
    assert routing["candidates_considered"] == 2


def test_a_request_of_many_images_goes_where_one_image_would_not(
    served: tuple[httpx.Client, dict],
) -> None:
    """One budget: the teacher answers one image within it, but not eight, which it predicts at
    seven of its per-image times more; the student, cheaper per image, gets the eight."""
    client, models = served
    n = 8

    def figure(name: str, key: str) -> float:
        return float(models[name]["versions"][-1]["routing"][key])

    def for_n(name: str) -> float:
        return predicted(models, name) + (n - 1) * figure(name, "per_image_ms")

    assert figure(SLOW, "per_image_ms") > figure(FAST, "per_image_ms") > 0
    assert for_n(FAST) < for_n(SLOW)
    # within the default headroom (0.8) of this budget: one image on the teacher, n on the student
    budget = (max(predicted(models, SLOW), for_n(FAST)) + for_n(SLOW)) / 2 / 0.8
    one = post(client, f"latency_budget_ms={budget:.3f}")
    assert one.status_code == 200 and one.json()["model"] == SLOW, one.text
    image = base64.b64encode(JPEG).decode()
    many = client.post("/predict", json={"images": [image] * n, "latency_budget_ms": budget})
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["model"] == FAST and len(body["predictions"]) == n
    # every figure is rounded to 3 decimals: the answer's, the one-image prediction and the n - 1
    # per-image times summed here, n + 1 roundings of at most half a thousandth each
    assert body["routing"]["predicted_p99_ms"] == pytest.approx(for_n(FAST), abs=(n + 1) * 5e-4)
    element = len(JPEG).to_bytes(4, "little") + JPEG
    header = {
        "inputs": [
            {
                "name": "input",
                "datatype": "BYTES",
                "shape": [n],
                "parameters": {"binary_data_size": n * len(element)},
            }
        ],
        "parameters": {"latency_budget_ms": budget},
    }
    head = json.dumps(header).encode()
    r = client.post(
        "/v2/models/auto/infer",
        content=head + element * n,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200 and r.json()["model_name"] == FAST, r.text


def test_loose_budget_and_high_floor_route_to_the_accurate_model(
    served: tuple[httpx.Client, dict],
) -> None:
    client, models = served
    r = post(client, "latency_budget_ms=100000")
    assert r.json()["model"] == SLOW
    floor = models[SLOW]["versions"][-1]["routing"]["accuracy"] - 0.001
    r = client.post(
        "/predict",
        json={"image": base64.b64encode(JPEG).decode(), "min_accuracy": floor},
    )
    assert r.status_code == 200 and r.json()["model"] == SLOW
    assert r.json()["routing"]["accuracy"] >= floor


def test_impossible_objective_is_a_422_naming_the_best(served: tuple[httpx.Client, dict]) -> None:
    client, _ = served
    r = post(client, "latency_budget_ms=0.0001&min_accuracy=0.99")
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "no_model_meets_objective"
    assert FAST in error["message"] and SLOW in error["message"]  # the fastest, the most accurate
    r = post(client, "latency_budget_ms=0.0001&fallback=cheapest")
    assert r.status_code == 200 and r.json()["model"] == FAST
    assert r.json()["routing"]["fallback"] == "cheapest"
    r = post(client, "latency_budget_ms=0.0001&fallback=most_accurate")
    assert r.json()["model"] == SLOW


def test_bad_objectives_are_422(served: tuple[httpx.Client, dict]) -> None:
    client, _ = served
    for query in (
        "latency_budget_ms=-1",
        "latency_budget_ms=abc",
        "min_accuracy=1.5",
        "fallback=cheapest",
        "latency_budget_ms=5&fallback=random",
        f"latency_budget_ms=5&model={FAST}",
        "latency_budget_ms=5&family=imagenet",
    ):
        r = post(client, query)
        assert r.status_code == 422, (query, r.text)


def test_routed_requests_are_counted(served: tuple[httpx.Client, dict]) -> None:
    client, _ = served
    before = samples(client.get("/metrics").text)
    key = ("rocketserve_routed_requests_total", (("model", SLOW), ("objective", "accuracy")))
    for _ in range(3):
        assert post(client, "min_accuracy=0.8").status_code == 200
    after = samples(client.get("/metrics").text)
    assert after[key] == before.get(key, 0) + 3


def test_objective_parsing() -> None:
    assert parse_objective({}) is None
    objective = parse_objective({"latency_budget_ms": "5", "min_accuracy": 0.5})
    assert objective == Objective(latency_budget_ms=5.0, min_accuracy=0.5)
    assert objective.kind == "latency+accuracy"


def test_v2_infer_routes_by_parameters(served: tuple[httpx.Client, dict]) -> None:
    client, _ = served
    header: dict = {
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1]}],
        "parameters": {"min_accuracy": 0.83},
    }
    element = len(JPEG).to_bytes(4, "little") + JPEG
    header["inputs"][0]["parameters"] = {"binary_data_size": len(element)}
    head = json.dumps(header).encode()
    r = client.post(
        "/v2/models/auto/infer",
        content=head + element,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model_name"] == SLOW
    assert answer["parameters"]["routing"]["chosen"] == SLOW_KEY
    zeros = {"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
    r = client.post("/v2/models/auto/infer", json={"inputs": [zeros]})  # no objective
    assert r.status_code == 400 and "routes by objective" in r.json()["error"]
