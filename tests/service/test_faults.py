"""Faults are contained and visible: bad model files, a dying inference thread, 5xx counted."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.__main__ import main
from service.http.app import create_app
from service.settings import Settings
from tests.service.test_endpoints import samples
from tests.support.server import running_service

pytestmark = pytest.mark.timeout(90)

TENSOR = {"tensor": np.zeros((1, 8, 8)).tolist()}


def corrupt_but_vouched_for(repo: Path, name: str) -> None:
    """Garbage in place of the ONNX file, with a card that vouches for the garbage (sha256 and
    size match): only ONNX Runtime can tell."""
    path = repo / name / "1" / "model.onnx"
    path.write_bytes(b"this is not an ONNX graph" * 10)
    manifest = repo / name / "manifest.json"
    card = json.loads(manifest.read_text())
    assert card["version"] == 1
    card["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    card["size_bytes"] = path.stat().st_size
    manifest.write_text(json.dumps(card))


@pytest.fixture
def broken_repo(digits_repo: Path, tmp_path: Path) -> Path:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    corrupt_but_vouched_for(repo, "digits-slow")
    return repo


def test_a_corrupt_model_is_skipped_and_the_others_served(broken_repo: Path) -> None:
    with running_service(broken_repo, {"ROCKETSERVE_LOG_LEVEL": "info"}) as (url, proc):
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/predict", json=TENSOR).status_code == 200
            r = http.post("/predict?model=digits-slow", json=TENSOR)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
            [skipped] = http.get("/models").json()["not_served"]
            assert (skipped["model"], skipped["version"]) == ("digits-slow", 1)
            assert "ONNX Runtime cannot load it" in skipped["reason"]
            metrics = samples(http.get("/metrics").text)
        key = (("model", "digits-slow"), ("version", "1"))
        assert metrics[("rocketserve_model_load_failures_total", key)] == 1
        assert metrics[("rocketserve_model_ready", key)] == 0
    log = proc.stdout.read().decode() if proc.stdout else ""
    lines = [line for line in log.splitlines() if "model digits-slow:1 not served" in line]
    assert len(lines) == 1 and "Traceback" not in log


@pytest.mark.usefixtures("clean_env")
def test_strict_start_up_fails_with_status_2_and_one_line(
    broken_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--model-repository", str(broken_repo), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: model digits-slow:1 not served: ")
    assert "ONNX Runtime cannot load it" in err


async def test_a_dying_inference_thread_is_restarted_and_counted(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(inline_inference_max_ms=0))  # every request via the thread
    async with app.router.lifespan_context(app):
        state = app.state.service
        served = state.registry.resolve(None)
        batcher = served.batcher
        real = batcher._run
        faults = []

        def faulty(batch: list[Any]) -> None:
            if not faults:
                faults.append(batch)
                raise RuntimeError("a bug in the batcher, not in the model")
            real(batch)

        batcher._run = faulty
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=10) as c:
            r = await c.post("/predict", json=TENSOR)
            assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed"
            assert (await c.post("/predict", json=TENSOR)).status_code == 200  # served again
        labels = (served.name, str(served.version))
        assert state.metrics.inference_restarts.labels(*labels)._value.get() == 1
        assert state.metrics.requests.labels(*labels, "500")._value.get() == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_thread_ended_by_a_base_exception_is_replaced(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(inline_inference_max_ms=0))
    async with app.router.lifespan_context(app):
        served = app.state.service.registry.resolve(None)
        batcher = served.batcher
        real = batcher._run
        faults = []

        def fatal(batch: list[Any]) -> None:
            if not faults:
                faults.append(batch)
                raise SystemExit("the thread ends")
            real(batch)

        batcher._run = fatal
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=10) as c:
            r = await c.post("/predict", json=TENSOR)
            assert r.status_code == 500  # the batch in hand fails, it does not hang to 504
            assert (await c.post("/predict", json=TENSOR)).status_code == 200


async def test_every_5xx_is_counted_including_outer_layers(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        state = app.state.service

        def broken(*_: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(state.registry, "resolve", broken)
        monkeypatch.setattr(state.registry, "describe", broken)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.post("/predict", json=TENSOR)).status_code == 500  # the gate's
            assert (await c.get("/models")).status_code == 500  # FastAPI's handler
        assert state.metrics.requests.labels("unknown", "", "500")._value.get() == 2
