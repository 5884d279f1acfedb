"""Answers compressed when the client asks (Accept-Encoding), as tritonclient's
``response_compression_algorithm`` does; small answers and other codings sent as they are."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import numpy as np
import pytest

from service.http.responses import MIN_COMPRESSED_BYTES, accepted_coding


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate, br", "gzip"),
        ("deflate;q=1, gzip;q=0.5", "deflate"),
        ("gzip;q=0, deflate", "deflate"),
        ("gzip;q=0", None),
        ("x-gzip", "gzip"),
        ("*", "gzip"),
        ("br, zstd", None),
        ("identity", None),
        ("gzip;q=soon", None),
        ("", None),
    ],
)
def test_the_coding_the_client_weighs_highest(header: str, coding: str | None) -> None:
    assert accepted_coding(header) == coding


def v2_body(n: int) -> dict[str, object]:
    x = np.random.default_rng(n).uniform(-2, 2, size=(n, 1, 8, 8)).astype(np.float32)
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 1, 8, 8],
                    "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }  # fmt: skip


async def raw_post(
    client: httpx.AsyncClient, body: dict[str, object], accept: str
) -> tuple[httpx.Response, bytes]:
    """The answer and its bytes as sent (httpx would decode them)."""
    request = client.build_request(
        "POST", "/v2/models/digits-logreg/infer", json=body, headers={"accept-encoding": accept}
    )
    response = await client.send(request, stream=True)
    raw = b"".join([chunk async for chunk in response.aiter_raw()])
    await response.aclose()
    return response, raw


async def test_a_long_answer_is_compressed_as_asked_and_says_so(client: httpx.AsyncClient) -> None:
    plain, raw = await raw_post(client, v2_body(32), "identity")
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert len(raw) >= MIN_COMPRESSED_BYTES
    for accept, unpack in (("gzip", gzip.decompress), ("deflate", zlib.decompress)):
        packed, sent = await raw_post(client, v2_body(32), accept)
        assert packed.headers["content-encoding"] == accept
        assert packed.headers["vary"] == "Accept-Encoding"
        assert int(packed.headers["content-length"]) == len(sent) < 0.7 * len(raw)
        assert json.loads(unpack(sent)) == json.loads(raw)


async def test_a_short_answer_or_a_refused_coding_is_sent_as_it_is(
    client: httpx.AsyncClient,
) -> None:
    short, _ = await raw_post(client, v2_body(1), "gzip")
    assert short.status_code == 200 and "content-encoding" not in short.headers
    refused, _ = await raw_post(client, v2_body(32), "gzip;q=0, br")
    assert refused.status_code == 200 and "content-encoding" not in refused.headers
