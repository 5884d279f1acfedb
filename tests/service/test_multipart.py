"""split_form: multipart bodies as clients send them, and every malformed body a 400."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
import requests

from service.errors import BadRequest
from service.inputs.multipart import split_form

JPEG = sorted((Path(__file__).parents[2] / "loadtest/data/cifar10").glob("*.jpg"))[0]
B = b"8a1f0c2e"


def _part(name: bytes, data: bytes, headers: bytes = b"") -> bytes:
    """A part with its opening delimiter line and the CRLF that ends its data."""
    disposition = b'Content-Disposition: form-data; name="' + name + b'"\r\n'
    return b"".join([b"--", B, b"\r\n", disposition, headers, b"\r\n", data, b"\r\n"])


def _form(*parts: bytes, close: bytes = b"--" + B + b"--\r\n") -> bytes:
    return b"".join(parts) + close


def _error(body: bytes, boundary: bytes | None = B) -> str:
    with pytest.raises(BadRequest) as caught:
        split_form(body, boundary)
    assert caught.value.code == "invalid_multipart"
    return caught.value.message


def test_httpx_body() -> None:
    jpeg = JPEG.read_bytes()
    request = httpx.Request(
        "POST", "http://x", files={"file": ("a.jpg", jpeg, "image/jpeg")}, data={"top_k": "3"}
    )
    boundary = request.headers["content-type"].partition("boundary=")[2].encode("latin-1")
    assert split_form(request.read(), boundary) == [("top_k", b"3"), ("file", jpeg)]


def test_requests_body() -> None:
    jpeg = JPEG.read_bytes()
    prepared = requests.Request(
        "POST", "http://x", files={"file": ("a.jpg", jpeg, "image/jpeg")}, data={"top_k": "3"}
    ).prepare()
    boundary = prepared.headers["Content-Type"].partition("boundary=")[2].encode("latin-1")
    assert split_form(prepared.body, boundary) == [("top_k", b"3"), ("file", jpeg)]


def test_browser_style_body() -> None:
    boundary = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        b"--" + boundary + b'\r\ncontent-disposition: form-data; name="file"; filename="x.jpg"\r\n'
        b"content-type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n"
        b"--" + boundary + b"\r\nCONTENT-DISPOSITION: Form-Data;NAME=top_k\r\n\r\n5\r\n"
        b"--" + boundary + b"--"
    )
    assert split_form(body, boundary) == [("file", b"\xff\xd8\xff"), ("top_k", b"5")]


def test_data_that_looks_like_delimiters_is_data() -> None:
    data = b"a\r\n--b\r\n--" + B[:-1] + b"x\r\n-\r\n--"
    assert split_form(_form(_part(b"file", data)), B) == [("file", data)]
    assert split_form(_form(_part(b"file", b"\r\n\r\n")), B) == [("file", b"\r\n\r\n")]
    assert split_form(_form(_part(b"file", b"")), B) == [("file", b"")]


def test_epilogue_and_no_parts() -> None:
    body = _form(_part(b"file", b"x"), close=b"--" + B + b"--\r\nepilogue\r\n--" + B)
    assert split_form(body, B) == [("file", b"x")]
    assert split_form(b"--" + B + b"--", B) == []


def test_names_are_decoded_leniently() -> None:
    value = b'form-data; name="caf\xc3\xa9 \xff"'
    body = b"--" + B + b"\r\nContent-Disposition: " + value + b"\r\n\r\nd\r\n--" + B + b"--"
    assert split_form(body, B) == [("café \ufffd", b"d")]
    nameless = b"--" + B + b"\r\nContent-Type: text/plain\r\n\r\nv\r\n--" + B + b"--"
    assert split_form(nameless, B) == [("", b"v")]


def test_missing_closing_delimiter_and_truncation() -> None:
    for close in (b"", b"--" + B, b"--" + B + b"-", b"--" + B + b"\r\n"):
        message = _error(_form(_part(b"file", b"x"), close=close))
        assert message == "multipart body ends before its closing boundary"
    body = _form(_part(b"top_k", b"3"), _part(b"file", bytes(range(256))))
    end = len(body) - len(b"--" + B + b"--\r\n") + len(B) + 4
    for cut in range(end):  # every prefix short of the whole closing `--boundary--`
        _error(body[:cut])


def test_bad_boundaries() -> None:
    body = _form(_part(b"file", b"x"))
    assert _error(body, b"") == "multipart body without a boundary"
    assert _error(body, None) == "multipart body without a boundary"
    long = b"b" * 257
    _error(body.replace(B, long), long)  # over python-multipart's limit: a 400, not a 500


def test_garbage_is_a_400_never_another_error() -> None:
    for body in (b"garbage", b"--xx\r\ngarbage", b"--" + B + b"\r\n\r\n\r\n", b"--" + B + b"x"):
        _error(body)
    rng = random.Random(7)
    base = _form(_part(b"top_k", b"3"), _part(b"file", b"\xff\xd8\xff" * 20))
    for _ in range(2000):
        body = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(body))
            body[at : at + rng.randrange(3)] = rng.choice([b"", b"\r\n", b"--", b'"', b";", b"\n"])
        try:
            parts = split_form(bytes(body), B)
        except BadRequest as exc:
            assert exc.code == "invalid_multipart"
        else:
            assert all(isinstance(n, str) and isinstance(d, bytes) for n, d in parts)
