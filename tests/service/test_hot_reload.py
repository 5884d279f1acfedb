"""Rolling out a model version under load loses no request: poll mode and the repository API."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import Reference
from tests.support.onnx_repo import build_digits_model
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "reload-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 32


async def test_reload_under_load_answers_every_request(digits_repo: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    env = {
        "ROCKETSERVE_MODEL_CONTROL_MODE": "explicit",
        "ROCKETSERVE_API_KEY": KEY,
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    x = np.random.default_rng(0).uniform(-2, 2, size=(1, 1, 8, 8)).astype(np.float32)
    body = {"tensor": x.tolist(), "model": "digits-logreg", "top_k": 10}
    answers: list[tuple[int, dict]] = []
    stop = asyncio.Event()

    async def client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = await c.post("/predict", json=body)
                answers.append((r.status_code, r.json()))

    with running_service(repo, env) as (url, _):
        workers = [asyncio.create_task(client(url)) for _ in range(CLIENTS)]
        async with httpx.AsyncClient(base_url=url, timeout=60) as admin:
            await asyncio.sleep(0.5)
            for version in (3, 4):
                await asyncio.to_thread(build_digits_model, repo, "digits-logreg", version)
                r = await admin.post("/v2/repository/models/digits-logreg/load", headers=AUTH)
                assert r.status_code == 200, r.text
                # From the switch on, new requests are answered by the new version.
                after = (await admin.post("/predict", json=body)).json()
                assert after["version"] == version
                await asyncio.sleep(0.5)
            # Reload with nothing new, and unload and load another model, all under load.
            r = await admin.post("/v2/repository/models/digits-logreg/load", headers=AUTH)
            assert r.status_code == 200
            for action in ("unload", "load"):
                r = await admin.post(f"/v2/repository/models/digits-slow/{action}", headers=AUTH)
                assert r.status_code == 200, r.text
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
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


async def test_poll_mode_rolls_out_published_versions_under_load(
    digits_repo: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    env = {
        "ROCKETSERVE_MODEL_CONTROL_MODE": "poll",
        "ROCKETSERVE_REPOSITORY_POLL_S": "0.2",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    x = np.random.default_rng(1).uniform(-2, 2, size=(1, 1, 8, 8)).astype(np.float32)
    body = {"tensor": x.tolist(), "model": "digits-logreg", "top_k": 10}
    answers: list[tuple[int, dict]] = []
    stop = asyncio.Event()

    async def client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = await c.post("/predict", json=body)
                answers.append((r.status_code, r.json()))

    with running_service(repo, env) as (url, _):
        workers = [asyncio.create_task(client(url)) for _ in range(CLIENTS)]
        await asyncio.sleep(0.5)
        for version in (3, 4):
            await asyncio.to_thread(build_digits_model, repo, "digits-logreg", version)
            for _ in range(200):  # applied within a few polls
                await asyncio.sleep(0.05)
                if answers and answers[-1][1].get("version") == version:
                    break
            else:
                raise AssertionError(f"version {version} was never served")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
    failures = [a for a in answers if a[0] != 200]
    print(f"poll-mode roll-out under load: {len(answers)} requests, {len(failures)} failures")
    assert not failures, failures[:3]
    assert {a["version"] for _, a in answers} == {2, 3, 4}
