"""Rolling out a model version under load loses no request: poll mode and the repository API."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.http.app import create_app
from service.settings import Settings
from tests.service.conftest import Reference
from tests.service.test_endpoints import samples
from tests.support.onnx_repo import build_digits_model
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "reload-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 32


class Traffic:
    """``CLIENTS`` clients that keep /predict requests in flight against one model until
    stopped, keeping every answer."""

    def __init__(self, url: str, seed: int) -> None:
        self.x = np.random.default_rng(seed).uniform(-2, 2, size=(1, 1, 8, 8)).astype(np.float32)
        self.body = {"tensor": self.x.tolist(), "model": "digits-logreg", "top_k": 10}
        self.answers: list[tuple[int, dict]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(url)) for _ in range(CLIENTS)]

    async def _client(self, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while not self._stop.is_set():
                r = await c.post("/predict", json=self.body)
                self.answers.append((r.status_code, r.json()))

    async def stop(self) -> list[tuple[int, dict]]:
        """Stop the clients; every request they sent, with its answer."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.answers


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_reload_under_load_answers_every_request(
    digits_repo: Path, tmp_path: Path, workers: str
) -> None:
    """With two worker processes the clients' connections are spread over both, and each
    answer to the API holds for both (service/repository/control.py)."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    env = {
        "ROCKETSERVE_MODEL_CONTROL_MODE": "explicit",
        "ROCKETSERVE_API_KEY": KEY,
        "ROCKETSERVE_LOG_LEVEL": "warning",
        "ROCKETSERVE_WORKERS": workers,
    }
    with running_service(repo, env) as (url, _):
        traffic = Traffic(url, seed=0)
        body, x = traffic.body, traffic.x
        async with httpx.AsyncClient(base_url=url, timeout=60) as admin:
            await asyncio.sleep(0.5)
            for version in (3, 4):
                await asyncio.to_thread(build_digits_model, repo, "digits-logreg", version)
                r = await admin.post("/v2/repository/models/digits-logreg/load", headers=AUTH)
                assert r.status_code == 200, r.text
                # From the switch on, new requests are answered by the new version, on a
                # connection to any worker (each request a new connection).
                for _ in range(8):
                    async with httpx.AsyncClient(base_url=url, timeout=60) as fresh:
                        after = (await fresh.post("/predict", json=body)).json()
                    assert after["version"] == version
                await asyncio.sleep(0.5)
            # Reload with nothing new, and unload and load another model, all under load.
            r = await admin.post("/v2/repository/models/digits-logreg/load", headers=AUTH)
            assert r.status_code == 200
            for action in ("unload", "load"):
                r = await admin.post(f"/v2/repository/models/digits-slow/{action}", headers=AUTH)
                assert r.status_code == 200, r.text
            await asyncio.sleep(0.5)
        answers = await traffic.stop()
    failures = [a for a in answers if a[0] != 200]
    print(f"hot reload under load: {len(answers)} requests, {len(failures)} failures")
    assert not failures, failures[:3]
    versions = {a["version"] for _, a in answers}
    assert {2, 3, 4} <= versions
    for version in versions:  # every answer is the right one for the version that gave it
        expected = Reference(repo, "digits-logreg", version).probs(x)[0]
        for _, answer in (a for a in answers if a[1]["version"] == version):
            scores = {p["index"]: p["score"] for p in answer["predictions"][0]}
            np.testing.assert_allclose([scores[i] for i in range(10)], expected, rtol=1e-5)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_poll_mode_rolls_out_published_versions_under_load(
    digits_repo: Path, tmp_path: Path, workers: str
) -> None:
    """Every worker process watches the repository: with two, each rolls out on its own."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    env = {
        "ROCKETSERVE_WORKERS": workers,
        "ROCKETSERVE_MODEL_CONTROL_MODE": "poll",
        "ROCKETSERVE_REPOSITORY_POLL_S": "0.2",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(repo, env) as (url, _):
        traffic = Traffic(url, seed=1)
        await asyncio.sleep(0.5)
        for version in (3, 4):
            await asyncio.to_thread(build_digits_model, repo, "digits-logreg", version)
            for _ in range(200):  # applied within a few polls
                await asyncio.sleep(0.05)
                if traffic.answers and traffic.answers[-1][1].get("version") == version:
                    break
            else:
                raise AssertionError(f"version {version} was never served")
        await asyncio.sleep(0.5)
        answers = await traffic.stop()
        # Every process rolled out: fresh connections, spread over the workers by the kernel,
        # are all answered by version 4 (one worker left behind would answer about half).
        latest = []
        for _ in range(24):
            async with httpx.AsyncClient(base_url=url, timeout=30) as fresh:
                latest.append((await fresh.post("/predict", json=traffic.body)).json()["version"])
    failures = [a for a in answers if a[0] != 200]
    print(f"poll-mode roll-out under load: {len(answers)} requests, {len(failures)} failures")
    assert not failures, failures[:3]
    assert {a["version"] for _, a in answers} == {2, 3, 4}
    assert latest == [4] * 24


async def test_reloading_a_version_under_load_keeps_its_gauges_true(
    make_settings: Callable[..., Settings],
) -> None:
    """A version loaded again while its old instance still has requests in flight: the shared
    in-flight gauge ends at 0, not below (before, the new instance reset it while the old one's
    requests were still to leave)."""
    settings = make_settings(
        model_control_mode="explicit", api_key=KEY, inline_inference_max_ms=0, warmup_runs=0
    )
    app = create_app(settings)
    body = {"tensor": np.zeros((1, 1, 8, 8)).tolist(), "model": "digits-logreg:2"}
    statuses: list[int] = []
    stop = asyncio.Event()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:

            async def client() -> None:
                while not stop.is_set():
                    statuses.append((await c.post("/predict", json=body)).status_code)

            clients = [asyncio.create_task(client()) for _ in range(16)]
            try:
                await asyncio.sleep(0.3)
                for _ in range(3):
                    r = await c.post("/v2/repository/models/digits-logreg/load", headers=AUTH)
                    assert r.status_code == 200, r.text
                    await asyncio.sleep(0.2)
            finally:  # the clients stop whatever happens, so a failure cannot hang the test
                stop.set()
                await asyncio.gather(*clients)
            exposition = (await c.get("/metrics")).text
    assert statuses and set(statuses) == {200}
    in_flight = {
        labels: value
        for (name, labels), value in samples(exposition).items()
        if name == "rocketserve_in_flight_requests" and ("model", "digits-logreg") in labels
    }
    assert in_flight and set(in_flight.values()) == {0.0}, in_flight
