"""Model versions: policies, each version with its own card, and memory given back on unload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.contract.model_card import sha256_file
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.support.onnx_repo import build_digits_model
from tests.support.zoo import batch1_p99_ms, teacher, zoo_cards

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]


def load(repo: Path, **overrides: object) -> ModelRegistry:
    overrides.setdefault("warmup_runs", 1)
    settings = Settings(model_repository=repo, **overrides)  # type: ignore[arg-type]
    return ModelRegistry.load(settings, ServiceMetrics())


@pytest.mark.parametrize(
    ("policy", "served"),
    [("latest:1", [2]), ("latest:5", [1, 2]), ("all", [1, 2]), ("specific:1", [1])],
)
def test_version_policies(digits_repo: Path, policy: str, served: list[int]) -> None:
    registry = load(digits_repo, version_policy=policy)
    assert sorted(registry.models["digits-logreg"]) == served
    assert registry.resolve("digits-logreg").version == max(served)  # the newest loaded


def test_per_model_policy_overrides_the_default(digits_repo: Path) -> None:
    registry = load(digits_repo, model_version_policies={"digits-logreg": "all"})
    assert sorted(registry.models["digits-logreg"]) == [1, 2]
    with pytest.raises(ValueError, match="not 'all', 'latest:N'"):
        Settings(model_repository=digits_repo, model_version_policies={"m": "newest"})
    # a count past int()'s digit limit is a setting error, not a start-up traceback
    for huge in ("latest:" + "9" * 5000, "specific:1," + "9" * 10):
        with pytest.raises(ValueError):
            Settings(model_repository=digits_repo, version_policy=huge)
    assert Settings(model_repository=digits_repo, version_policy="latest:999999999").version_policy


def test_each_version_is_served_with_its_own_card(digits_repo: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    model_dir = repo / "digits-logreg"
    card = json.loads((model_dir / "manifest.json").read_text())
    # Version 1 gets a card of its own, with labels of its own.
    own = dict(card, version=1, labels=[f"digit-{i}" for i in range(10)], other_versions=[])
    own["sha256"] = sha256_file(model_dir / "1" / "model.onnx")
    own["size_bytes"] = (model_dir / "1" / "model.onnx").stat().st_size
    (model_dir / "1" / "manifest.json").write_text(json.dumps(own))
    registry = load(repo, version_policy="all")
    assert registry.resolve("digits-logreg:1").card.labels[0] == "digit-0"
    assert registry.resolve("digits-logreg:2").card.labels[0] == "0"
    assert not registry.failures


def test_a_version_no_card_vouches_for_is_refused(digits_repo: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    path = repo / "digits-logreg" / "manifest.json"
    card = json.loads(path.read_text())
    card["other_versions"] = []  # the card no longer records version 1
    path.write_text(json.dumps(card))
    registry = load(repo, version_policy="all")
    assert sorted(registry.models["digits-logreg"]) == [2]
    [failure] = registry.failures
    assert failure.version == 1 and "no card vouches for it" in failure.reason


async def test_memory_is_given_back_after_50_load_unload_cycles(tmp_path: Path) -> None:
    import psutil

    repo = tmp_path / "repo"
    repo.mkdir()
    name = teacher().name  # the biggest model of the zoo: a leak would show
    shutil.copytree(ROOT / "models" / name, repo / name)
    build_digits_model(repo, "digits-logreg")
    registry = load(repo, warmup_runs=0)
    registry.start()
    process = psutil.Process()
    rss = []
    x = np.zeros((4, 3, 32, 32), dtype=np.float32)
    for _ in range(50):
        await registry.unload_model(name)
        await registry.load_model(name)
        await registry.resolve(name).batcher.submit(x)  # and use it
        rss.append(process.memory_info().rss)
    await registry.close()
    growth_mb = (rss[-1] - rss[0]) / 2**20
    print(f"RSS after cycle 1: {rss[0] / 2**20:.0f} MB, after 50: {rss[-1] / 2**20:.0f} MB")
    assert growth_mb < 50, f"RSS grew {growth_mb:.0f} MB over 50 load/unload cycles"


def test_the_default_model_is_the_best_within_the_default_budget(digits_repo: Path) -> None:
    from service.repository.registry import default_by_budget

    zoo = load(ROOT / "models", warmup_runs=0)
    # The zoo's most accurate model whose card times batch 1 within 1 ms, not the first name.
    cards = zoo_cards()
    within = [c for c in cards if batch1_p99_ms(c) <= 1.0]
    assert within, "the zoo has students within the default budget"
    best = max(within, key=lambda c: c.metrics.top1)  # cards by name: ties go to the first
    assert zoo.default_model == best.name
    most_accurate = max(cards, key=lambda c: c.metrics.top1)
    assert default_by_budget(zoo.models, 1e6) == most_accurate.name  # no real budget
    fastest = min(
        (v[max(v)] for v in zoo.models.values()),
        key=lambda m: (next(r.p99_ms for r in m.card.profile.rows if r.batch_size == 1), m.name),
    )
    assert default_by_budget(zoo.models, 1e-6) == fastest.name  # none meets it: the fastest
    other = next(c.name for c in cards if c.name != best.name)
    assert load(ROOT / "models", warmup_runs=0, default_model=other).default_model == other
    assert load(digits_repo).default_model == "digits-logreg"  # equal top-1: the first by name
