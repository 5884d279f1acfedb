"""`make run`'s default: a real uvicorn process serving models/ answers real CIFAR-10 photos.

The README's quickstart request is replayed as documented, and the best student labels the
project's 20 sample JPEGs (two per class, from the test split) far above chance.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from export.report import find_teacher
from service.contract.model_card import model_dirs, read_manifest
from tests.support.cli import ROOT
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SAMPLES = ROOT / "loadtest" / "data" / "cifar10"
EXAMPLE_IMAGE = "loadtest/data/cifar10/cat_0000.jpg"


def best_student() -> str:
    """The most accurate model of models/ that is not the teacher or one of its variants."""
    cards = [read_manifest(d) for d in model_dirs(ROOT / "models")]
    teacher = find_teacher(cards)
    assert teacher is not None
    students = [c for c in cards if teacher.name not in (c.name, c.derived_from)]
    return max(students, key=lambda c: c.metrics.top1).name


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """``python -m service --model-repository models`` (what `make run` starts) on a free port."""
    env = {"ROCKETSERVE_LOG_LEVEL": "warning"}
    with running_service("models", env, ready_timeout=120) as (base, _):
        yield base


def test_the_readme_request_gets_the_documented_answer(url: str) -> None:
    model = best_student()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"file=@{EXAMPLE_IMAGE} 'localhost:8000/predict?model={model}&top_k=3'" in readme
    with (ROOT / EXAMPLE_IMAGE).open("rb") as f:
        r = httpx.post(
            f"{url}/predict", params={"model": model, "top_k": 3}, files={"file": f}, timeout=30
        )
    assert r.status_code == 200, r.text
    body = r.json()
    top = body["predictions"][0]
    assert body["model"] == model and top[0]["label"] == "cat"
    assert f'"model":"{model}"' in readme and '{"label":"cat"' in readme


def test_the_best_student_labels_real_photos_far_above_chance(url: str) -> None:
    model = best_student()
    photos = sorted(SAMPLES.glob("*.jpg"))
    assert len(photos) == 20
    right = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for photo in photos:
            r = client.post("/predict", params={"model": model}, files={"file": photo.read_bytes()})
            assert r.status_code == 200, r.text
            right += r.json()["predictions"][0][0]["label"] == photo.stem.rsplit("_", 1)[0]
    assert right >= 12, f"{model}: {right}/20 (chance: 2/20)"
