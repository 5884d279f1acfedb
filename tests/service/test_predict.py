"""POST /predict in process: every input form, image modes, model selection and top_k."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.requests import ClientDisconnect

from service.contract.preprocess import preprocess_image
from service.errors import PayloadTooLarge, Unprocessable
from service.http.asgi_io import header, query_params, read_body
from service.http.responses import error_reply
from tests.service.conftest import Reference, png_bytes

pytestmark = pytest.mark.timeout(60)


def assert_matches(prediction: list[dict], probs: np.ndarray, labels: tuple[str, ...]) -> None:
    """A served top-k list equals the reference probabilities' top-k (order, labels, scores)."""
    order = np.argsort(-probs, kind="stable")[: len(prediction)]
    assert [p["index"] for p in prediction] == order.tolist()
    assert [p["label"] for p in prediction] == [labels[i] for i in order]
    np.testing.assert_allclose([p["score"] for p in prediction], probs[order], rtol=1e-5)


@pytest.fixture
def ref(reference: Callable[[str, int], Reference]) -> Reference:
    """The default model (first name, highest version): digits-logreg v2."""
    return reference("digits-logreg", 2)


def expected(ref: Reference, images: list[Image.Image]) -> np.ndarray:
    batch = np.stack([preprocess_image(img, ref.card.input) for img in images])
    return ref.probs(batch)


async def test_raw_image_body(client: httpx.AsyncClient, ref: Reference, digit_images) -> None:
    x, y = digit_images
    image = Image.fromarray(x[0])
    r = await client.post(
        "/predict", content=png_bytes(image), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["batch_size"]) == ("digits-logreg", 2, 1)
    assert len(body["predictions"]) == 1 and len(body["predictions"][0]) == 5
    assert_matches(body["predictions"][0], expected(ref, [image])[0], ref.card.labels)
    assert body["predictions"][0][0]["label"] == str(y[0])
    timing = body["timing"]
    assert 0 <= timing["queue_ms"] <= timing["total_ms"]
    assert 0 < timing["inference_ms"] <= timing["total_ms"]


async def test_multipart_several_files_keep_their_order(
    client: httpx.AsyncClient, ref: Reference, digit_images
) -> None:
    x, _ = digit_images
    images = [Image.fromarray(x[i]) for i in range(3)]
    files = [("file", (f"{i}.png", png_bytes(im), "image/png")) for i, im in enumerate(images)]
    r = await client.post("/predict", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3 and all(len(p) == 3 for p in preds)
    for pred, probs in zip(preds, expected(ref, images), strict=True):
        assert_matches(pred, probs, ref.card.labels)


async def test_json_image_images_and_data_url(
    client: httpx.AsyncClient, ref: Reference, digit_images
) -> None:
    x, _ = digit_images
    images = [Image.fromarray(x[i]) for i in (5, 6)]
    encoded = [base64.b64encode(png_bytes(im, "JPEG")).decode() for im in images]
    decoded = [Image.open(io.BytesIO(base64.b64decode(e))) for e in encoded]
    want = expected(ref, decoded)

    r = await client.post("/predict", json={"image": encoded[0], "top_k": 10})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"][0], want[0], ref.card.labels)
    assert sum(p["score"] for p in r.json()["predictions"][0]) == pytest.approx(1.0, abs=1e-5)

    r = await client.post("/predict", json={"images": encoded})
    assert [len(p) for p in r.json()["predictions"]] == [5, 5]
    for pred, probs in zip(r.json()["predictions"], want, strict=True):
        assert_matches(pred, probs, ref.card.labels)

    r = await client.post("/predict", json={"image": "data:image/jpeg;base64," + encoded[1]})
    assert_matches(r.json()["predictions"][0], want[1], ref.card.labels)


async def test_json_tensor_chw_and_nchw(client: httpx.AsyncClient, ref: Reference) -> None:
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    want = ref.probs(batch)
    r = await client.post("/predict", json={"tensor": batch[0].tolist(), "top_k": 2})
    assert r.status_code == 200, r.text
    assert_matches(r.json()["predictions"][0], want[0], ref.card.labels)
    r = await client.post("/predict", json={"tensor": batch.tolist()})
    assert len(r.json()["predictions"]) == 4
    for pred, probs in zip(r.json()["predictions"], want, strict=True):
        assert_matches(pred, probs, ref.card.labels)
    # Integers are numbers too.
    r = await client.post("/predict", json={"tensor": np.zeros((1, 8, 8), int).tolist()})
    assert r.status_code == 200


def _modes(gray: np.ndarray) -> dict[str, Image.Image]:
    big = Image.fromarray(gray).resize((300, 211), Image.Resampling.NEAREST)
    rgb = Image.merge("RGB", [Image.fromarray(gray)] * 3)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    return {
        "L": Image.fromarray(gray),
        "RGB": rgb,
        "RGBA": rgba,
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "large": big,
        "1": Image.fromarray(gray).convert("1"),
    }


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "large", "1"])
async def test_any_mode_and_size_is_preprocessed_as_the_manifest_says(
    client: httpx.AsyncClient, ref: Reference, digit_images, mode: str
) -> None:
    x, _ = digit_images
    image = _modes(x[7])[mode]
    data = png_bytes(image)
    r = await client.post("/predict?top_k=10", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    reloaded = Image.open(io.BytesIO(data))
    assert_matches(r.json()["predictions"][0], expected(ref, [reloaded])[0], ref.card.labels)


async def test_model_and_version_selection(
    client: httpx.AsyncClient, reference: Callable[[str, int], Reference], digit_images
) -> None:
    x, _ = digit_images
    data = png_bytes(Image.fromarray(x[3]))
    image = Image.fromarray(x[3])
    headers = {"content-type": "image/png"}
    r = await client.post("/predict?model=digits-logreg:1", content=data, headers=headers)
    assert (r.json()["model"], r.json()["version"]) == ("digits-logreg", 1)
    r = await client.post("/predict?model=digits-slow", content=data, headers=headers)
    assert (r.json()["model"], r.json()["version"]) == ("digits-slow", 1)
    slow = reference("digits-slow", 1)
    assert_matches(r.json()["predictions"][0], expected(slow, [image])[0], slow.card.labels)
    files = {"file": ("a.png", data, "image/png")}
    r = await client.post("/predict", files=files, data={"model": "digits-logreg:1"})
    assert r.json()["version"] == 1
    r = await client.post(
        "/predict", json={"image": base64.b64encode(data).decode(), "model": "digits-slow"}
    )
    assert r.json()["model"] == "digits-slow"


async def test_large_image_is_decoded_off_the_loop_with_the_same_result(
    client: httpx.AsyncClient, ref: Reference, digit_images
) -> None:
    x, _ = digit_images
    # 700x500 = 350,000 declared pixels: over the inline limit, so decoded in a worker thread.
    image = Image.fromarray(x[9]).resize((700, 500), Image.Resampling.BILINEAR).convert("RGB")
    data = png_bytes(image)
    r = await client.post("/predict?top_k=10", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert_matches(
        r.json()["predictions"][0],
        expected(ref, [Image.open(io.BytesIO(data))])[0],
        ref.card.labels,
    )


async def test_image_mode_that_cannot_be_converted_is_a_400(client: httpx.AsyncClient) -> None:
    lab = png_bytes(Image.new("LAB", (8, 8)), "TIFF")
    r = await client.post("/predict", content=lab, headers={"content-type": "image/tiff"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_image" and "LAB" in r.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "I", "F", "LA", "PA", "I;16B"])
async def test_other_tiff_modes_are_served(client: httpx.AsyncClient, mode: str) -> None:
    data = png_bytes(Image.new(mode, (9, 7)), "TIFF")
    r = await client.post("/predict", content=data, headers={"content-type": "image/tiff"})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 5


async def test_bad_requests_never_reach_a_batch(
    client: httpx.AsyncClient, ref: Reference, digit_images
) -> None:
    x, _ = digit_images
    good = [png_bytes(Image.fromarray(x[i])) for i in range(40)]
    bad = [b"", b"not an image", good[0][:30], b"\x89PNG\r\n\x1a\n"] * 10
    headers = {"content-type": "image/png"}

    async def post(body: bytes) -> httpx.Response:
        return await client.post("/predict?model=digits-slow", content=body, headers=headers)

    # Good and bad requests interleaved, all at once: the bad ones fail alone, before queueing.
    mixed = [b for pair in zip(good, bad, strict=True) for b in pair]
    responses = await asyncio.gather(*(post(b) for b in mixed))
    assert [r.status_code for r in responses[0::2]] == [200] * 40
    assert [r.status_code for r in responses[1::2]] == [400] * 40
    metrics = (await client.get("/metrics")).text
    assert 'rocketserve_batch_size_sum{model="digits-slow",version="1"} 40.0' in metrics


# -- the plain-ASGI pieces of service.http.predict -------------------------------------------------


def _receiver(messages: list[dict[str, Any]]) -> tuple[Callable[[], Any], list[int]]:
    """An ASGI receive() over ``messages``, and a one-item list counting the calls."""
    calls = [0]

    async def receive() -> dict[str, Any]:
        calls[0] += 1
        return messages[calls[0] - 1]

    return receive, calls


async def test_read_body_joins_chunks() -> None:
    receive, _ = _receiver(
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"", "more_body": True},
            {"type": "http.request", "body": b"cd", "more_body": False},
        ]
    )
    assert await read_body(receive, limit=10, declared=None) == b"abcd"


async def test_read_body_stops_at_the_limit_without_reading_the_rest() -> None:
    chunk = {"type": "http.request", "body": b"x" * 1000, "more_body": True}
    receive, calls = _receiver([chunk] * 1000)
    with pytest.raises(PayloadTooLarge):
        await read_body(receive, limit=4500, declared=None)
    assert calls[0] == 5  # the fifth chunk crossed the limit; nothing after it was read


async def test_read_body_trusts_an_oversized_content_length_without_reading() -> None:
    receive, calls = _receiver([{"type": "http.request", "body": b"x"}])
    with pytest.raises(PayloadTooLarge, match="5000 bytes"):
        await read_body(receive, limit=4096, declared="5000")
    assert calls[0] == 0
    assert await read_body(receive, limit=4096, declared="1") == b"x"


async def test_read_body_raises_client_disconnect() -> None:
    receive, _ = _receiver(
        [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]
    )
    with pytest.raises(ClientDisconnect):
        await read_body(receive, limit=10, declared=None)


def test_header_and_query_come_from_the_scope() -> None:
    scope = {
        "headers": [(b"content-type", b"image/png"), (b"x-a", b"1"), (b"x-a", b"2")],
        "query_string": b"model=m%3A2&top_k=3&top_k=4&empty=",
    }
    assert header(scope, b"content-type") == "image/png"
    assert header(scope, b"x-a") == "2"  # the last one, as Starlette's Headers.get
    assert header(scope, b"content-length") is None
    assert query_params(scope) == {"model": "m:2", "top_k": "4", "empty": ""}
    assert query_params({"headers": [], "query_string": b""}) == {}


async def test_reply_sends_two_asgi_messages_with_its_headers() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    reply = error_reply(Unprocessable("bad top_k", code="invalid_top_k", headers={"X-A": "b"}))
    await reply.send(send)
    start, body = sent
    assert start["status"] == 422
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": str(len(body["body"])).encode(),
        b"x-a": b"b",
    }
    assert json.loads(body["body"]) == {"error": {"code": "invalid_top_k", "message": "bad top_k"}}
