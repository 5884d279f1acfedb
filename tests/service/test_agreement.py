"""Live agreement with the teacher: sampled requests re-run through the reference, off the path."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.contract.model_card import read_manifest, sha256_file
from service.contract.preprocess import normalize_uint8
from service.http.app import create_app
from service.repository.agreement import WINDOW
from service.settings import Settings
from tests.service.conftest import Reference
from tests.service.test_endpoints import samples
from tests.support.onnx_repo import digits_uint8_split
from tests.support.server import running_service

pytestmark = pytest.mark.timeout(120)
N = 180  # inputs sent to each student (under the agreement window of 200)


def student_of(repo: Path, source: str, name: str, teacher: str, noise: float = 0.0) -> None:
    """A copy of model ``source`` named ``name`` whose card names ``teacher``; ``noise`` > 0
    perturbs its weights, so that it answers differently on some inputs."""
    shutil.copytree(repo / source, repo / name)
    path = repo / name / "manifest.json"
    card = json.loads(path.read_text())
    for version_dir in (repo / name).iterdir():
        if version_dir.is_dir() and version_dir.name != str(card["version"]):
            shutil.rmtree(version_dir)
    onnx_path = repo / name / str(card["version"]) / "model.onnx"
    if noise:
        graph = onnx.load(str(onnx_path))
        for init in graph.graph.initializer:
            if init.name == "W":
                w = numpy_helper.to_array(init)
                w = w + np.random.default_rng(0).normal(0, noise * np.abs(w).mean(), w.shape)
                init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "W"))
        onnx.save(graph, str(onnx_path))
    card["name"], card["other_versions"] = name, []
    card["training"]["teacher"] = teacher
    card["sha256"], card["size_bytes"] = sha256_file(onnx_path), onnx_path.stat().st_size
    path.write_text(json.dumps(card))


@pytest.fixture(scope="module")
def repo(digits_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = Path(shutil.copytree(digits_repo, tmp_path_factory.mktemp("agree") / "repo"))
    student_of(repo, "digits-logreg", "digits-copy", teacher="digits-logreg")  # agrees always
    student_of(repo, "digits-logreg", "digits-other", teacher="digits-logreg", noise=1.5)
    return repo


def test_agreement_is_measured_against_the_teacher(repo: Path) -> None:
    env = {"ROCKETSERVE_AGREEMENT_SAMPLE_RATE": "1", "ROCKETSERVE_LOG_LEVEL": "warning"}
    _, images, _, _ = digits_uint8_split()  # real digits, where two nets sometimes differ
    spec = read_manifest(repo / "digits-logreg").input
    x = normalize_uint8(images[:N], spec)
    with running_service(repo, env) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        for name in ("digits-copy", "digits-other"):
            for i in range(0, N, 30):  # requests of 30 inputs each
                r = c.post("/predict", json={"tensor": x[i : i + 30].tolist(), "model": name})
                assert r.status_code == 200
        for _ in range(100):  # the samples finish after the answers
            m = samples(c.get("/metrics").text)
            done = [
                sum(
                    m.get(
                        (
                            "rocketserve_agreement_total",
                            (("agree", a), ("model", n), ("reference", "digits-logreg")),
                        ),
                        0,
                    )
                    for a in ("true", "false")
                )
                for n in ("digits-copy", "digits-other")
            ]
            if done == [N, N]:
                break
            time.sleep(0.05)
        # the samples ran on the reference, but no request was made to it: Triton's statistics
        # count its batches, not the samples as its requests
        [stats] = c.get("/v2/models/digits-logreg/versions/2/stats").json()["model_stats"]
    assert done == [N, N]
    requests = stats["inference_stats"]
    assert all(requests[k]["count"] == 0 for k in ("success", "queue", "compute_infer"))
    assert stats["inference_count"] == 0 < stats["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"]) == 2 * N

    def value(metric: str, model: str, **extra: str) -> float:
        labels = tuple(sorted({"model": model, "reference": "digits-logreg", **extra}.items()))
        return m.get((metric, labels), 0.0)

    # The copy agrees on every input, with the very same probabilities.
    assert value("rocketserve_agreement_total", "digits-copy", agree="true") == N
    assert value("rocketserve_agreement_ratio", "digits-copy") == 1.0
    assert value("rocketserve_agreement_top1_prob_diff_sum", "digits-copy") < 1e-5
    # The other net agrees exactly as often as ONNX Runtime says the two nets agree.
    teacher = Reference(repo, "digits-logreg", 2).probs(x).argmax(axis=1)
    other = Reference(repo, "digits-other", 2).probs(x).argmax(axis=1)
    expected = int((teacher == other).sum())
    assert expected < N  # the nets differ on some of these inputs
    assert value("rocketserve_agreement_total", "digits-other", agree="true") == expected
    assert value("rocketserve_agreement_total", "digits-other", agree="false") == N - expected
    assert value("rocketserve_agreement_ratio", "digits-other") == pytest.approx(
        expected / min(N, WINDOW)
    )


async def test_a_blocked_reference_never_delays_the_client(
    repo: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        model_repository=repo, agreement_sample_rate=1.0, max_queue_size=64, request_timeout_ms=2000
    )
    app = create_app(settings)
    release = threading.Event()
    async with app.router.lifespan_context(app):
        state = app.state.service
        teacher = state.registry.resolve("digits-logreg")
        real = teacher.batcher._model

        def blocked(batch: np.ndarray) -> np.ndarray:
            assert release.wait(30)
            return real(batch)

        teacher.batcher._model = blocked
        teacher.batcher.inline = False
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            tensor = np.zeros((1, 1, 8, 8)).tolist()
            for _ in range(30):
                t0 = time.monotonic()
                r = await c.post("/predict", json={"tensor": tensor, "model": "digits-copy"})
                # Far below the 2 s deadline and the 30 s the reference is blocked for.
                assert r.status_code == 200 and time.monotonic() - t0 < 1.5
        labels = ("digits-copy", "digits-logreg")
        dropped = state.metrics.agreement_dropped.labels(*labels)._value.get()
        # The reference's queue (64 inputs) takes samples only while under a quarter full: the
        # first ones are inside its blocked batches (one per inference thread) or wait behind
        # them, every later one is dropped and counted.
        running = sum(len(b) for b in teacher.batcher._running.values())
        queued = teacher.batcher.queue_depth
        assert queued <= 16 and dropped + queued + running == 30
        assert dropped >= 30 - 16 - running
        release.set()


async def test_the_recent_ratio_is_kept_per_reference() -> None:
    """When a model's reference changes (its teacher unloaded, say), the new pair's window starts
    empty: the old reference's samples are not mixed into its ratio."""
    from types import SimpleNamespace

    from service.observability.metrics import ServiceMetrics
    from service.repository.agreement import AgreementSampler

    metrics = ServiceMetrics()
    sampler = AgreementSampler(metrics, rate=1.0)
    answer = np.array([[0.0, 5.0]], dtype=np.float32)  # class 1

    def reference(name: str, logits: list[float]) -> SimpleNamespace:
        async def submit(batch: np.ndarray) -> SimpleNamespace:
            return SimpleNamespace(outputs=np.array([logits], dtype=np.float32))

        return SimpleNamespace(name=name, batcher=SimpleNamespace(submit=submit))

    agreeing, disagreeing = reference("a", [0.0, 3.0]), reference("b", [3.0, 0.0])
    for _ in range(3):
        await sampler._compare("m", agreeing, np.zeros((1, 2)), answer)
    await sampler._compare("m", disagreeing, np.zeros((1, 2)), answer)
    m = samples(metrics.exposition().decode())
    ratio = "rocketserve_agreement_ratio"
    assert m[(ratio, (("model", "m"), ("reference", "a")))] == 1.0
    assert m[(ratio, (("model", "m"), ("reference", "b")))] == 0.0
