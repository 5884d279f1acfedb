"""Response checks, model discovery parsing and the committed sample images."""

from __future__ import annotations

import copy
from io import BytesIO
from typing import Any

import pytest
from PIL import Image

from loadtest.payloads import (
    DATA_DIR,
    ModelInfo,
    check_prediction,
    images_for,
    json_body,
    load_images,
    multipart_files,
    parse_models,
)

DIGITS = ModelInfo("digits-a", 1, tuple(str(i) for i in range(10)), "gray", "digits", 0.9)
CIFAR = ModelInfo("cifar-a", 3, ("airplane", "automobile", "bird"), "rgb", "cifar10")


def _answer(n: int = 2, k: int = 3) -> dict[str, Any]:
    scores = {7: 0.8, 1: 0.15, 2: 0.05}
    top = [{"label": str(i), "index": i, "score": s} for i, s in scores.items()]
    return {
        "model": "digits-a",
        "version": 1,
        "predictions": [copy.deepcopy(top[:k]) for _ in range(n)],
        "timing": {"queue_ms": 0.1, "inference_ms": 0.2, "total_ms": 0.5},
        "batch_size": n,
    }


def test_valid_answer_passes() -> None:
    assert check_prediction(_answer(), DIGITS, 2) is None
    assert check_prediction(_answer(k=3), DIGITS, 2, top_k=3) is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b.update(model="other"), "model"),
        (lambda b: b["predictions"].pop(), "expected 2 prediction"),
        (lambda b: b["predictions"][1][0].update(label="cat", index=0), "not one of the model"),
        (lambda b: b["predictions"][0][0].update(index=3), "does not match label"),
        (lambda b: b["predictions"][0][0].update(score=1.5), "outside [0, 1]"),
        (lambda b: b["predictions"][0][2].update(score=-0.01), "outside [0, 1]"),
        (lambda b: b["predictions"][0][0].update(score=float("nan")), "outside [0, 1]"),
        (lambda b: b["predictions"][0].reverse(), "best first"),
        (lambda b: b["predictions"].__setitem__(0, []), "empty"),
        (lambda b: b.pop("predictions"), "prediction list"),
    ],
)
def test_bad_answers_are_named(mutate: Any, expected: str) -> None:
    body = _answer()
    mutate(body)
    reason = check_prediction(body, DIGITS, 2)
    assert reason is not None and expected in reason


def test_top_k_length_is_checked() -> None:
    reason = check_prediction(_answer(k=2), DIGITS, 2, top_k=3)
    assert reason is not None and "top_k=3" in reason
    assert check_prediction([], DIGITS, 1) == "response is not a JSON object"


def test_parse_models_reads_the_service_description() -> None:
    body = {
        "models": [
            {
                "name": "digits-a",
                "default_version": 2,
                "labels": list(DIGITS.labels),
                "input": {"color": "gray"},
                "training": {"dataset": "digits"},
                "macs": 640,
                "versions": [
                    {"version": 1, "offline": {"metrics": None}},
                    {"version": 2, "offline": {"metrics": {"top1": 0.95, "dataset": "digits"}}},
                ],
            }
        ]
    }
    (model,) = parse_models(body)
    assert model == ModelInfo("digits-a", 2, DIGITS.labels, "gray", "digits", 0.95, 640)
    with pytest.raises(ValueError, match="no models"):
        parse_models({"models": []})
    with pytest.raises(ValueError, match="lacks name"):
        parse_models([{"name": "x"}])


def test_sample_images_are_real_small_and_labelled() -> None:
    digits, cifar = load_images(DATA_DIR / "digits"), load_images(DATA_DIR / "cifar10")
    assert len(digits) == 20 and len(cifar) == 20
    assert {i.label for i in digits} == set(DIGITS.labels)
    assert {i.media_type for i in digits} == {"image/png"}
    assert {i.media_type for i in cifar} == {"image/jpeg"}
    for img in [*digits, *cifar]:
        decoded = Image.open(BytesIO(img.data))
        decoded.load()
        assert decoded.size == ((8, 8) if img.media_type == "image/png" else (32, 32))
    total = sum(len(i.data) for i in [*digits, *cifar])
    assert total < 100_000
    assert images_for(DIGITS)[0].media_type == "image/png"
    assert images_for(CIFAR)[0].media_type == "image/jpeg"


def test_request_bodies() -> None:
    images = load_images(DATA_DIR / "digits")[:3]
    assert json_body(images[:1], "m") == {"image": images[0].b64, "model": "m"}
    assert json_body(images) == {"images": [i.b64 for i in images]}
    files = multipart_files(images)
    assert [f[0] for f in files] == ["file"] * 3
    assert files[0][1] == (images[0].name, images[0].data, "image/png")
