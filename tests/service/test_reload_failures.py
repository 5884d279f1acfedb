"""Reloads that fail keep what is served: a broken new version, a served one being rewritten,
a transient fault in poll mode, a change made while the service starts."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.contract.model_card import sha256_file
from service.errors import BadRequest, ServiceError
from service.http.app import create_app
from service.observability.metrics import ServiceMetrics
from service.repository import registry as registry_module
from service.repository.polling import RepositoryPoller, snapshot
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.service.test_endpoints import samples

pytestmark = pytest.mark.timeout(120)
NAME = "digits-logreg"


def _repo(digits_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(digits_repo, tmp_path / "repo"))


def _load(repo: Path, **overrides: object) -> ModelRegistry:
    settings = Settings(model_repository=repo, warmup_runs=1, **overrides)  # type: ignore[arg-type]
    return ModelRegistry.load(settings, ServiceMetrics())


def _publish(repo: Path, version: int, onnx_bytes: bytes) -> None:
    """Version ``version`` of NAME with its own card vouching for ``onnx_bytes``."""
    model_dir = repo / NAME
    card = json.loads((model_dir / "manifest.json").read_text())
    (model_dir / str(version)).mkdir()
    path = model_dir / str(version) / "model.onnx"
    path.write_bytes(onnx_bytes)
    own = dict(card, version=version, other_versions=[])
    own["sha256"], own["size_bytes"] = sha256_file(path), path.stat().st_size
    (model_dir / str(version) / "manifest.json").write_text(json.dumps(own))


def test_latest_n_serves_the_newest_n_that_load(digits_repo: Path, tmp_path: Path) -> None:
    """A v3 its card vouches for but ONNX Runtime refuses does not push v1 out of latest:2."""
    repo = _repo(digits_repo, tmp_path)
    _publish(repo, 3, b"not an onnx graph")
    registry = _load(repo, version_policy="latest:2")
    assert sorted(registry.models[NAME]) == [1, 2]
    assert [(f.model, f.version) for f in registry.failures] == [(NAME, 3)]


async def test_a_served_version_being_rewritten_keeps_the_serving_ones(
    digits_repo: Path, tmp_path: Path
) -> None:
    """latest:1 serves v2; v2's file is half rewritten when a reload comes: v1 must not take its
    place, v2 stays served (and its ready gauge 1), and the reload says why it did nothing."""
    repo = _repo(digits_repo, tmp_path)
    registry = _load(repo, version_policy="latest:1")
    registry.start()
    served = registry.models[NAME][2]
    path = repo / NAME / "2" / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadRequest, match=r"versions \[2\] are still served"):
        await registry.load_model(NAME)
    assert registry.models[NAME] == {2: served} and registry.resolve(NAME) is served
    ready = samples(registry.metrics.exposition().decode())
    assert ready[("rocketserve_model_ready", (("model", NAME), ("version", "2")))] == 1.0
    await registry.close()


async def test_poll_mode_tries_a_failed_load_again(digits_repo: Path, tmp_path: Path) -> None:
    """A fault that passes (memory, say) must not leave a published version unserved for good."""
    repo = _repo(digits_repo, tmp_path)
    registry = _load(repo, version_policy="latest:1")
    registry.start()
    poller = RepositoryPoller(registry, repo, interval_s=0.01)
    shutil.copytree(repo / NAME / "2", repo / NAME / "3")
    _republish_as_3(repo)
    real, calls = registry.load_model, []

    async def flaky(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:
            raise ServiceError("out of memory, for once", code="load_failed", status=400)
        await real(name)

    registry.load_model = flaky  # type: ignore[method-assign]
    now = snapshot(repo)
    assert now is not None
    await poller.apply(now)
    assert sorted(registry.models[NAME]) == [2] and poller.applied[NAME] != now[NAME]
    await asyncio.sleep(0.02)  # the back-off
    await poller.apply(now)
    assert calls == [NAME, NAME] and sorted(registry.models[NAME]) == [3]
    assert poller.applied == now and not poller.retry
    await registry.close()


def _republish_as_3(repo: Path) -> None:
    """3/ a copy of 2/: its own card, saying version 3."""
    card_path = repo / NAME / "3" / "manifest.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())
    else:
        card = json.loads((repo / NAME / "manifest.json").read_text())
        path = repo / NAME / "3" / "model.onnx"
        card["sha256"], card["size_bytes"] = sha256_file(path), path.stat().st_size
    card.update(version=3, other_versions=[])
    card_path.write_text(json.dumps(card))


async def test_a_version_published_while_the_service_loads_is_served(
    digits_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(digits_repo, tmp_path)
    real = ModelRegistry.load

    def load_then_publish(*args: object, **kwargs: object) -> ModelRegistry:
        loaded = real(*args, **kwargs)  # type: ignore[arg-type]
        shutil.copytree(repo / NAME / "2", repo / NAME / "3")  # published meanwhile
        _republish_as_3(repo)
        return loaded

    monkeypatch.setattr(registry_module.ModelRegistry, "load", staticmethod(load_then_publish))
    settings = Settings(
        model_repository=repo,
        warmup_runs=1,
        version_policy="latest:1",
        model_control_mode="poll",
        repository_poll_s=0.05,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(100):
                served = (await c.get(f"/v2/models/{NAME}")).json()["versions"]
                if served == ["3"]:
                    break
                await asyncio.sleep(0.05)
    assert served == ["3"]


async def test_an_unlisted_repository_is_a_503_and_the_index_still_lists_what_is_served(
    digits_repo: Path, tmp_path: Path
) -> None:
    repo = _repo(digits_repo, tmp_path)
    registry = _load(repo)
    registry.start()
    repo.rename(tmp_path / "unmounted")
    assert {e["name"] for e in registry.index()} == {NAME, "digits-slow"}
    with pytest.raises(ServiceError, match="cannot be listed") as caught:
        await registry.load_model(NAME)
    assert caught.value.status == 503
    await registry.close()


async def test_a_version_without_its_own_card_keeps_the_labels_it_was_served_with(
    digits_repo: Path, tmp_path: Path
) -> None:
    """v1 is vouched for by the model's card (no 1/manifest.json). A new top-level card with
    other labels would relabel v1's answers under clients pinned to it: the reload is refused
    and v1 keeps its labels; a version with its own card is not held back."""
    repo = _repo(digits_repo, tmp_path)
    for own in repo.glob(f"{NAME}/*/manifest.json"):
        own.unlink()  # only the model's card, recording both versions
    registry = _load(repo, version_policy="all")
    registry.start()
    v1 = registry.models[NAME][1]
    labels = list(v1.card.labels)
    card_path = repo / NAME / "manifest.json"
    card = json.loads(card_path.read_text())
    card["labels"] = [f"digit {i}" for i in range(10)]
    card_path.write_text(json.dumps(card))
    with pytest.raises(BadRequest, match=f"{NAME}:1 would change its labels or input"):
        await registry.load_model(NAME)
    assert (
        registry.models[NAME][1] is v1 and list(registry.resolve(f"{NAME}:1").card.labels) == labels
    )
    await registry.close()
