"""Bad input: a 4xx JSON error naming the problem, never a 500, and the service keeps serving."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from service.http.app import create_app
from service.inputs.images import open_image
from service.settings import Settings
from tests.service.conftest import png_bytes

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

GOOD_TENSOR = np.zeros((1, 8, 8)).tolist()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _png() -> bytes:
    return png_bytes(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))


def _jpeg(declare: tuple[int, int] | None = None) -> bytes:
    """A grey JPEG (the fast decoder's path); ``declare`` rewrites the size in its SOF header."""
    data = png_bytes(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)), "JPEG")
    if declare is None:
        return data
    sof = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1): height, width
    return data[:sof] + struct.pack(">HH", declare[1], declare[0]) + data[sof + 4 :]


def _tiff_with_float_strip_offsets() -> bytes:
    """A TIFF whose StripOffsets tag (273) is typed FLOAT instead of LONG: Pillow opens it and
    then fails to seek to a float offset (TypeError, not OSError)."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "TIFF")
    data = bytearray(out.getvalue())
    assert data[:2] == b"II"  # little-endian
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:
            struct.pack_into("<H", data, entry + 2, 11)  # type LONG (4) -> FLOAT (11)
            return bytes(data)
    raise AssertionError("Pillow wrote no StripOffsets tag")


def _raw(data: bytes, ctype: str = "image/png", query: str = "") -> dict[str, Any]:
    return {"url": "/predict" + query, "content": data, "headers": {"content-type": ctype}}


def _json_text(text: str) -> dict[str, Any]:
    return _raw(text.encode(), "application/json")


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown model", _raw(_png(), query="?model=nope"), 404, "unknown_model"),
    ("unknown version", _raw(_png(), query="?model=digits-logreg:9"), 404, "unknown_version"),
    ("non-numeric version", _raw(_png(), query="?model=digits-logreg:x"), 404, "unknown_version"),
    ("not an image", _raw(b"hello, world"), 400, "invalid_image"),
    ("truncated image", _raw(_png()[:40]), 400, "invalid_image"),
    ("truncated jpeg", _raw(_jpeg()[: len(_jpeg()) - 30], "image/jpeg"), 400, "invalid_image"),
    ("tiff with float offsets", _raw(_tiff_with_float_strip_offsets()), 400, "invalid_image"),
    ("jpeg declaring 60000x60000", _raw(_jpeg((60000, 60000))), 413, "image_too_large"),
    ("empty body", _raw(b""), 400, "empty_body"),
    ("unsupported type", _raw(b"abc", "text/plain"), 415, "unsupported_media_type"),
    ("no content type", {"url": "/predict", "content": b"abc"}, 415, "unsupported_media_type"),
    (
        "tensor wrong shape",
        {"json": {"tensor": np.zeros((1, 9, 8)).tolist()}},
        422,
        "invalid_tensor",
    ),
    ("tensor wrong rank", {"json": {"tensor": np.zeros((8, 8)).tolist()}}, 422, "invalid_tensor"),
    (
        "tensor rank 5",
        {"json": {"tensor": np.zeros((1, 1, 1, 8, 8)).tolist()}},
        422,
        "invalid_tensor",
    ),
    ("tensor of strings", {"json": {"tensor": [[["a"] * 8] * 8]}}, 422, "invalid_tensor"),
    ("tensor of booleans", {"json": {"tensor": [[[True] * 8] * 8]}}, 422, "invalid_tensor"),
    ("ragged tensor", {"json": {"tensor": [[[0.0] * 8] * 7 + [[0.0] * 3]]}}, 422, "invalid_tensor"),
    ("empty batch", {"json": {"tensor": []}}, 422, "invalid_tensor"),
    (
        "NaN in tensor",
        _json_text('{"tensor": [[' + ",".join(["[NaN,0,0,0,0,0,0,0]"] * 8) + "]]}"),
        422,
        "invalid_tensor",
    ),
    (
        "infinity in tensor",
        _json_text('{"tensor": [[' + ",".join(["[Infinity,0,0,0,0,0,0,0]"] * 8) + "]]}"),
        422,
        "invalid_tensor",
    ),
    (
        "overflow to inf",
        {"json": {"tensor": (np.ones((1, 8, 8)) * 1e300).tolist()}},
        422,
        "invalid_tensor",
    ),
    (
        "finite tensor that overflows the logits",
        {"json": {"tensor": (np.ones((1, 8, 8)) * 3e38).tolist()}},
        422,
        "non_finite_output",
    ),
    ("top_k zero", {"json": {"tensor": GOOD_TENSOR, "top_k": 0}}, 422, "invalid_top_k"),
    ("top_k too big", {"json": {"tensor": GOOD_TENSOR, "top_k": 11}}, 422, "invalid_top_k"),
    ("top_k not int", _raw(_png(), query="?top_k=abc"), 422, "invalid_top_k"),
    ("top_k bool", {"json": {"tensor": GOOD_TENSOR, "top_k": True}}, 422, "invalid_top_k"),
    ("invalid JSON", _json_text("{not json"), 400, "invalid_json"),
    ("JSON nesting bomb", _json_text("[" * 100_000 + "]" * 100_000), 400, "invalid_json"),
    (
        "tensor nested too deep",
        _json_text('{"tensor": ' + "[" * 70 + "1" + "]" * 70 + "}"),
        422,
        "invalid_tensor",
    ),
    ("JSON not an object", {"json": [1, 2]}, 422, "invalid_json"),
    ("JSON unknown key", {"json": {"tensor": GOOD_TENSOR, "x": 1}}, 422, "unknown_field"),
    ("JSON two inputs", {"json": {"tensor": GOOD_TENSOR, "image": "AA=="}}, 422, "missing_input"),
    ("JSON no input", {"json": {"model": "digits-slow"}}, 422, "missing_input"),
    ("JSON model not str", {"json": {"tensor": GOOD_TENSOR, "model": 3}}, 422, "invalid_model"),
    ("bad base64", {"json": {"image": "not base64!!"}}, 400, "invalid_base64"),
    (
        "base64 not image",
        {"json": {"image": base64.b64encode(b"abc").decode()}},
        400,
        "invalid_image",
    ),
    ("images not list", {"json": {"images": "AA=="}}, 422, "missing_input"),
    ("image not str", {"json": {"images": [3]}}, 422, "invalid_base64"),
    ("empty image", {"json": {"images": [""]}}, 400, "empty_image"),
    ("multipart no file", {"files": {"other": ("a", b"x")}}, 422, "unknown_field"),
    ("multipart only fields", {"files": [("model", (None, "digits-slow"))]}, 400, "missing_input"),
    (
        "multipart broken",
        _raw(b"--xx\r\ngarbage", "multipart/form-data; boundary=xx"),
        400,
        "invalid_multipart",
    ),
    ("multipart no boundary", _raw(b"abc", "multipart/form-data"), 400, "invalid_multipart"),
    ("decompression bomb", _raw(png_declaring(8000, 8000)), 413, "image_too_large"),
    ("pillow bomb limit", _raw(png_declaring(20000, 20000)), 413, "image_too_large"),
    (
        "too many inputs",
        {"json": {"tensor": np.zeros((33, 1, 8, 8)).tolist()}},
        413,
        "too_many_inputs",
    ),
    (
        "too many images",
        {"json": {"images": [base64.b64encode(_png()).decode()] * 33}},
        413,
        "too_many_inputs",
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(digits_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the whole table of bad inputs: it must survive all of them."""
    app = create_app(Settings(model_repository=digits_repo, warmup_runs=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@pytest.mark.parametrize(("what", "request_kw", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_a_clear_4xx(
    shared: httpx.AsyncClient, what: str, request_kw: dict[str, Any], status: int, code: str
) -> None:
    kw = dict(request_kw)
    url = kw.pop("url", "/predict")
    r = await shared.post(url, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10
    # ...and the service keeps serving.
    ok = await shared.post("/predict", json={"tensor": GOOD_TENSOR})
    assert ok.status_code == 200


async def test_an_image_past_pillows_own_limit_is_refused_in_the_services_words(
    shared: httpx.AsyncClient,
) -> None:
    """Pillow's own fixed guard (179 M pixels) is off: the service's check decides, in its
    words and with its limit, and a limit set above Pillow's is the one that holds."""
    bomb = png_declaring(20000, 20000)  # 400 M pixels
    r = await shared.post("/predict", content=bomb, headers={"content-type": "image/png"})
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert "over the limit of 40000000" in message and "bomb" not in message
    opened = open_image(bomb, max_pixels=500_000_000)  # an operator's higher limit
    assert (opened.width, opened.height) == (20000, 20000)


async def test_v2_outputs_that_overflow_are_a_4xx(shared: httpx.AsyncClient) -> None:
    huge = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [3e38] * 64}
    r = await shared.post("/v2/models/digits-logreg/infer", json={"inputs": [huge]})
    assert r.status_code == 422 and "not finite" in r.json()["error"], r.text
    ok = {**huge, "data": [0.5] * 64}
    assert (
        await shared.post("/v2/models/digits-logreg/infer", json={"inputs": [ok]})
    ).status_code == 200


async def test_v2_bodies_that_would_cost_memory_or_cannot_be_echoed_are_a_4xx(
    shared: httpx.AsyncClient,
) -> None:
    infer = "/v2/models/digits-logreg/infer"
    data = ",".join(["0.5"] * 64)
    good = '{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [' + data + "]}"
    # 70,000 empty arrays: ~140 KB of body, tens of MB as Python lists; refused unparsed
    bomb = '{"inputs": [' + good + '], "parameters": {"x": [' + ",".join(["[]"] * 70_000) + "]}}"
    r = await shared.post(
        infer, content=bomb.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "arrays and objects" in r.json()["error"], r.text
    # an id the answer would echo but UTF-8 cannot encode (a lone surrogate, legal JSON)
    lone = '{"id": "\\ud800", "inputs": [' + good + "]}"
    r = await shared.post(
        infer, content=lone.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "'id'" in r.json()["error"], r.text
    fine = '{"id": "caf\\u00e9", "inputs": [' + good + "]}"
    r = await shared.post(
        infer, content=fine.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["id"] == "caf\u00e9", r.text


_V2_INPUT = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}
_V2_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("datatype a list", {"inputs": [{**_V2_INPUT, "datatype": [1]}]}, "unknown datatype [1]"),
    ("datatype an object", {"inputs": [{**_V2_INPUT, "datatype": {}}]}, "unknown datatype {}"),
    # no element, but numpy cannot shape an array so: each dimension is bounded too
    ("zero beside a huge dim", {"inputs": [{**_V2_INPUT, "shape": [0, 10**30], "data": []}]},
     "is too large"),
    ("zero beside 2**62 twice",
     {"inputs": [{**_V2_INPUT, "shape": [0, 2**62, 2**62], "data": []}]}, "is too large"),
    ("binary_data_output a string",
     {"inputs": [_V2_INPUT], "parameters": {"binary_data_output": "false"}},
     "binary_data_output must be true or false"),
    # integers are most often raw 8-bit pixels: refused, as Triton refuses, not taken for
    # preprocessed values the model would answer confidently wrong
    ("raw 8-bit pixels", {"inputs": [{**_V2_INPUT, "datatype": "UINT8", "data": [128] * 64}]},
     "datatype is UINT8, but the model expects FP32 values preprocessed as its card says"),
    ("INT64", {"inputs": [{**_V2_INPUT, "datatype": "INT64", "data": [0] * 64}]},
     "datatype is INT64"),
    ("BF16", {"inputs": [{**_V2_INPUT, "datatype": "BF16"}]}, "BF16 is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body", "message"), _V2_CASES, ids=[c[0] for c in _V2_CASES])
async def test_bad_v2_input_gets_a_clear_400(
    shared: httpx.AsyncClient, what: str, body: dict[str, Any], message: str
) -> None:
    r = await shared.post("/v2/models/digits-logreg/infer", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    ok = await shared.post("/v2/models/digits-logreg/infer", json={"inputs": [_V2_INPUT]})
    assert ok.status_code == 200, ok.text


async def test_v2_floats_are_taken_when_they_convert_exactly(shared: httpx.AsyncClient) -> None:
    infer = "/v2/models/digits-logreg/infer"
    for datatype in ("FP16", "FP64"):
        body = {"inputs": [{**_V2_INPUT, "datatype": datatype}]}
        assert (await shared.post(infer, json=body)).status_code == 200
    inexact = {"inputs": [{**_V2_INPUT, "datatype": "FP64", "data": [0.1] * 64}]}
    r = await shared.post(infer, json=inexact)
    assert r.status_code == 400 and "do not convert exactly" in r.json()["error"], r.text


async def test_bad_v2_binary_and_bytes_input_gets_a_clear_400(shared: httpx.AsyncClient) -> None:
    infer = "/v2/models/digits-logreg/infer"
    # the binary extension: a zero-element tensor of huge dimensions, with its 0 bytes
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [0, 2**62, 2**62],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    r = await shared.post(
        infer,
        content=header,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert r.status_code == 400 and "is too large" in r.json()["error"], r.text
    # a BYTES string that is legal JSON but has no UTF-8 form (a lone surrogate)
    lone = '{"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}'
    r = await shared.post(
        infer, content=lone.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "lone surrogate" in r.json()["error"], r.text


async def test_messages_name_the_problem(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/predict?model=nope", content=_png(), headers={"content-type": "image/png"}
    )
    assert (
        "'nope'" in r.json()["error"]["message"] and "digits-logreg" in r.json()["error"]["message"]
    )
    r = await client.post("/predict", json={"tensor": np.zeros((1, 9, 8)).tolist()})
    assert "[1, 1, 9, 8]" in r.json()["error"]["message"]
    r = await client.post(
        "/predict", content=png_declaring(8000, 8000), headers={"content-type": "image/png"}
    )
    assert "8000x8000" in r.json()["error"]["message"]


@pytest_asyncio.fixture(loop_scope="module")
async def small_client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with a 4 KiB body limit."""
    app = create_app(make_settings(max_body_bytes=4096))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_compressed_bodies_are_decoded_within_the_body_limit(
    shared: httpx.AsyncClient, small_client: httpx.AsyncClient
) -> None:
    body = json.dumps({"tensor": GOOD_TENSOR}).encode()
    plain = await shared.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )
    assert plain.status_code == 200
    half = len(body) // 2  # two gzip members one after the other are one body, as gunzip reads
    members = gzip.compress(body[:half]) + gzip.compress(body[half:])
    for coding, packed in (
        ("gzip", gzip.compress(body)),
        ("gzip", members),
        ("x-gzip", members),
        ("gzip", gzip.compress(body) + b"\0" * 8),  # zero padding, as gunzip takes it
        ("deflate", zlib.compress(body)),
    ):
        headers = {"content-type": "application/json", "content-encoding": coding}
        r = await shared.post("/predict", content=packed, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == plain.json()["predictions"]
    refusals = [
        ("br", b"x", 415, "unsupported_encoding"),
        ("gzip", b"not gzip at all", 400, "invalid_encoding"),
        ("gzip", gzip.compress(body)[:-12], 400, "invalid_encoding"),  # cut short
        ("gzip", gzip.compress(body) + b"trailing", 400, "invalid_encoding"),
        ("deflate", zlib.compress(body) + b"trailing", 400, "invalid_encoding"),
        ("gzip", b"".join(gzip.compress(b" ") for _ in range(65)) + gzip.compress(body), 400,
         "invalid_encoding"),  # more members than any client sends
    ]  # fmt: skip
    for coding, content, status, code in refusals:
        headers = {"content-type": "application/json", "content-encoding": coding}
        r = await shared.post("/predict", content=content, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    # 1 MiB of zeros in about 1 KiB: refused once decoded past the 4 KiB limit, not inflated
    bomb = gzip.compress(b"0" * 2**20)
    assert len(bomb) < 4096
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    r = await small_client.post("/predict", content=bomb, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text


async def test_body_over_limit_is_413_declared_or_streamed(small_client: httpx.AsyncClient) -> None:
    big = b"\x00" * 5000
    r = await small_client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b"\x00" * 1000

    r = await small_client.post(
        "/predict", content=chunked(), headers={"content-type": "image/png"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    ok = await small_client.post("/predict", json={"tensor": GOOD_TENSOR})
    assert ok.status_code == 200


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/predict")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await client.get("/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
