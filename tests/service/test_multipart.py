"""split_form: the fast multipart splitter gives python-multipart's answer on every body."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.errors import BadRequest
from service.inputs import multipart
from service.inputs.multipart import _split_with_python_multipart, split_form

JPEG = sorted((Path(__file__).parents[2] / "loadtest/data/cifar10").glob("*.jpg"))[0]
B = b"8a1f0c2e"
D = b"\r\n--" + B  # the delimiter, as it appears after part data

Outcome = tuple[str, Any]  # ("ok", parts) or ("error", (code, message))


def _outcome(
    split: Callable[[bytes, bytes], list[tuple[str, bytes]]], body: bytes, boundary: bytes
) -> Outcome:
    """("ok", parts) or ("error", (code, message)); any other exception fails the test."""
    try:
        return "ok", split(body, boundary)
    except BadRequest as exc:
        return "error", (exc.code, exc.message)


def _same(body: bytes, boundary: bytes = B) -> Outcome:
    """split_form's outcome, checked to equal python-multipart's."""
    got = _outcome(split_form, body, boundary)
    assert got == _outcome(_split_with_python_multipart, body, boundary), body
    return got


def _fast(body: bytes, boundary: bytes = B) -> list[tuple[str, bytes]] | None:
    return multipart._split_fast(body, boundary)


def _part(name: bytes, data: bytes, headers: bytes = b"") -> bytes:
    """A part with its opening delimiter line and the CRLF that ends its data."""
    disposition = b'Content-Disposition: form-data; name="' + name + b'"\r\n'
    return b"".join([b"--", B, b"\r\n", disposition, headers, b"\r\n", data, b"\r\n"])


def _form(*parts: bytes, close: bytes = b"--" + B + b"--\r\n") -> bytes:
    return b"".join(parts) + close


def _client_body(
    files: dict[str, tuple[str, bytes, str]], data: dict[str, str]
) -> tuple[bytes, bytes]:
    """The body and boundary httpx sends for ``files=..., data=...``."""
    request = httpx.Request("POST", "http://x", files=files, data=data)
    boundary = request.headers["content-type"].partition("boundary=")[2].encode("latin-1")
    return request.read(), boundary


# --- the bodies clients send --------------------------------------------------------------------


def test_httpx_body_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = JPEG.read_bytes()
    body, boundary = _client_body(
        {"file": ("a.jpg", jpeg, "image/jpeg")}, {"top_k": "3", "model": "m"}
    )
    expected = _split_with_python_multipart(body, boundary)
    assert expected == [("top_k", b"3"), ("model", b"m"), ("file", jpeg)]

    def no_fallback(body: bytes, boundary: bytes | None) -> list[tuple[str, bytes]]:
        raise AssertionError("the fast path should have read this body")

    monkeypatch.setattr(multipart, "_split_with_python_multipart", no_fallback)
    assert split_form(body, boundary) == expected


def test_requests_body_takes_the_fast_path() -> None:
    requests = pytest.importorskip("requests")
    jpeg = JPEG.read_bytes()
    prepared = requests.Request(
        "POST", "http://x", files={"file": ("a.jpg", jpeg, "image/jpeg")}, data={"top_k": "3"}
    ).prepare()
    boundary = prepared.headers["Content-Type"].partition("boundary=")[2].encode("latin-1")
    assert _fast(prepared.body, boundary) == [("top_k", b"3"), ("file", jpeg)]
    assert _same(prepared.body, boundary) == ("ok", [("top_k", b"3"), ("file", jpeg)])


def test_browser_style_body_takes_the_fast_path() -> None:
    boundary = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        b"--" + boundary + b'\r\ncontent-disposition: form-data; name="file"; filename="x.jpg"\r\n'
        b"content-type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n"
        b"--" + boundary + b"\r\nCONTENT-DISPOSITION: Form-Data;NAME=top_k\r\n\r\n5\r\n"
        b"--" + boundary + b"--"
    )
    assert _fast(body, boundary) == [("file", b"\xff\xd8\xff"), ("top_k", b"5")]
    _same(body, boundary)


def test_content_transfer_encoding_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    body = _form(_part(b"file", b"/9j/", b"Content-Transfer-Encoding: base64\r\n"))
    calls: list[bytes] = []
    real = multipart._split_with_python_multipart

    def spy(body: bytes, boundary: bytes | None) -> list[tuple[str, bytes]]:
        calls.append(body)
        return real(body, boundary)

    monkeypatch.setattr(multipart, "_split_with_python_multipart", spy)
    assert split_form(body, B) == [("file", b"/9j/")]  # python-multipart does not decode it
    assert calls == [body]


# --- edge cases -------------------------------------------------------------------------------


def test_crlf_dashes_not_followed_by_the_boundary_are_data() -> None:
    data = b"a\r\n--b\r\n--" + B[:-1] + b"x\r\n-" + b"\r\n--"
    body = _form(_part(b"file", data))
    assert _fast(body) is not None
    assert _same(body) == ("ok", [("file", data)])


def test_boundary_inside_data_without_crlf_before_it_is_data() -> None:
    data = b"x--" + B + b"\r\n--" + B[:3] + b"\n--" + B + b"--"
    body = _form(_part(b"file", data))
    assert _fast(body) is not None
    assert _same(body) == ("ok", [("file", data)])


def test_delimiter_followed_by_other_bytes_is_data() -> None:
    # python-multipart reads CRLF--boundary as a delimiter only before CRLF, "--" or padding.
    for tail in (b"x", b"-x", b"\rx", b"_"):
        data = b"a" + D + tail + b"b"
        body = _form(_part(b"file", data))
        assert _fast(body) is not None
        assert _same(body) == ("ok", [("file", data)])


def test_empty_part() -> None:
    body = _form(_part(b"model", b""), _part(b"file", b"\x00"))
    assert _fast(body) is not None
    assert _same(body) == ("ok", [("model", b""), ("file", b"\x00")])


def test_data_made_of_line_breaks() -> None:
    for data in (b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"--", b"\r\n--"):
        assert _same(_form(_part(b"file", data))) == ("ok", [("file", data)])


def test_transport_padding_after_a_delimiter() -> None:
    body = _form(_part(b"top_k", b"3")).replace(
        b"--" + B + b"--",
        b"--" + B + b" \t \r\n" + _part(b"file", b"img")[len(B) + 4 :] + b"--" + B + b"--",
    )
    assert _fast(body) == [("top_k", b"3"), ("file", b"img")]
    assert _same(body) == ("ok", [("top_k", b"3"), ("file", b"img")])


def test_transport_padding_followed_by_other_bytes_is_malformed() -> None:
    body = _form(_part(b"top_k", b"3" + D + b"  x\r\nmore"))
    assert _fast(body) is None
    kind, (code, message) = _same(body)
    assert kind == "error" and code == "invalid_multipart"
    assert message.startswith("malformed multipart body: ")


def test_padding_after_the_first_delimiter_is_left_to_python_multipart() -> None:
    body = _form(_part(b"file", b"x")).replace(B + b"\r\n", B + b"  \r\n", 1)
    assert _fast(body) is None
    assert _same(body)[0] == "error"


def test_close_delimiter_then_epilogue() -> None:
    body = _form(
        _part(b"file", b"x"), close=b"--" + B + b"--\r\nepilogue \r\n--" + B + b"\r\n--junk"
    )
    assert _fast(body) == [("file", b"x")]
    assert _same(body) == ("ok", [("file", b"x")])
    no_crlf = _form(_part(b"file", b"x"), close=b"--" + B + b"--")
    assert _same(no_crlf) == ("ok", [("file", b"x")])


def test_missing_closing_delimiter() -> None:
    for body in (
        _form(_part(b"file", b"x"), close=b""),
        _form(_part(b"file", b"x"), close=b"--" + B),
        _form(_part(b"file", b"x"), close=b"--" + B + b"-"),
        _form(_part(b"file", b"x"), close=b"--" + B + b"\r\n"),
    ):
        assert _fast(body) is None
        assert _same(body) == (
            "error",
            ("invalid_multipart", "multipart body ends before its closing boundary"),
        )


def test_truncated_bodies() -> None:
    body = _form(_part(b"top_k", b"3"), _part(b"file", bytes(range(256))))
    close = len(body) - len(b"--" + B + b"--\r\n")
    for cut in range(close + len(B) + 4):  # every prefix short of the whole `--boundary--`
        outcome = _same(body[:cut])
        assert outcome[0] == "error", cut
        assert outcome[1][0] == "invalid_multipart"


def test_empty_body_and_nothing_after_headers() -> None:
    headers_only = b"--" + B + b'\r\nContent-Disposition: form-data; name="file"\r\n\r\n'
    for body in (b"", headers_only, b"--" + B + b"\r\n"):
        assert _same(body) == (
            "error",
            ("invalid_multipart", "multipart body ends before its closing boundary"),
        )


def test_no_parts() -> None:
    for body in (b"--" + B + b"--\r\n", b"--" + B + b"--"):
        assert _fast(body) == []
        assert _same(body) == ("ok", [])


def test_part_without_content_disposition_falls_back() -> None:
    for headers in (b"Content-Type: text/plain\r\n", b""):
        body = b"--" + B + b"\r\n" + headers + b"\r\nvalue\r\n--" + B + b"--\r\n"
        assert _fast(body) is None
        assert _same(body) == ("ok", [("", b"value")])


def test_lf_only_line_endings_fall_back() -> None:
    body = _form(_part(b"file", b"x")).replace(b"\r\n", b"\n")
    assert _fast(body) is None
    _same(body)


def test_name_forms() -> None:
    cases = {
        b"form-data; name=top_k": "top_k",  # a token
        b'form-data;name="a b";filename="c;d.jpg"': None,  # `;` inside quotes: fallback
        b'form-data ; NAME = "x" ; name="y"': "y",  # case-insensitive key, last one wins
        b'form-data; name="caf\xc3\xa9 \xff"': "café \ufffd",  # utf-8, errors replaced
        b'form-data; name="a\\"b"': None,  # backslash escape: fallback, which unescapes
        b"form-data; name*=utf-8''x; name=\"y\"": None,  # RFC 2231 parameter: fallback
        b"form-data": None,  # no name: fallback, which gives ""
        b'form-data; filename="a.jpg"': None,
        b'form-data; name=""': "",
        b'\tform-data;  name="f" \t': "f",
    }
    for value, fast_name in cases.items():
        body = b"--" + B + b"\r\nContent-Disposition: " + value + b"\r\n\r\ndata" + D + b"--"
        fast = _fast(body)
        assert fast == (None if fast_name is None else [(fast_name, b"data")]), value
        _same(body)
    escaped = b"--" + B + b'\r\nContent-Disposition: form-data; name="a\\"b"\r\n\r\nd' + D + b"--"
    assert _same(escaped) == ("ok", [('a"b', b"d")])


def test_header_forms() -> None:
    ok = [
        b"content-disposition:form-data; name=f",
        b"CONTENT-DISPOSITION:   form-data; name=f",
        b"Content-Type: image/jpeg\r\nContent-Disposition: form-data; name=f",
        b"Content-Disposition: form-data; name=g\r\nContent-Disposition: form-data; name=f",
        b"Content-Disposition: form-data; name=f" + b"\r\nContent-Type: a" * 7,  # 8 headers
    ]
    odd = [
        b"Content-Disposition : form-data; name=f",  # blank before the colon: malformed
        b"Content-Disposition form-data; name=f",  # no colon
        b"Content-Disposition: form-data; name=f\r\nContent-Type",  # no colon
        b"Content-Disposition: form-data; name=f\r\nX-Other: 1",
        b"Content-Disposition: form-data; name=f\r\nContent-Length: 4",
        b"Content-Disposition: form-data; name=f\rX: 1",
        b"Content-Disposition: form-data; name=f\nX: 1",
        b"Content-Disposition: form-data; name=f" + b"\r\nContent-Type: a" * 8,  # 9 headers
        b"Content-Disposition: form-data; name=f; filename=" + b"a" * 5000,  # over the line limit
    ]
    for headers in ok + odd:
        body = b"--" + B + b"\r\n" + headers + b"\r\n\r\ndata" + D + b"--"
        assert (_fast(body) is not None) == (headers in ok), headers
        outcome = _same(body)
        if headers in ok:
            assert outcome == ("ok", [("f", b"data")])


def test_preamble_is_python_multipart_s_business() -> None:
    part = _form(_part(b"file", b"x"))
    for preamble in (b"\r\n", b"\r\n\r\nsome text\r\n", b"preamble\r\n", b"\r\na-b\r\n"):
        assert _fast(preamble + part) is None
        _same(preamble + part)
    assert _same(b"\r\n" + part) == ("ok", [("file", b"x")])


def test_bad_boundaries() -> None:
    body = _form(_part(b"file", b"x"))
    assert _same(body, b"") == ("error", ("invalid_multipart", "multipart body without a boundary"))
    long = b"b" * 257
    outcome = _same(body.replace(B, long), long)
    assert outcome[0] == "error" and outcome[1][0] == "invalid_multipart"
    for weird in (b"a\r\nb", b"-", b"a b", b"\n"):
        _same(body.replace(B, weird), weird)


def test_garbage() -> None:
    rng = random.Random(7)
    for body in (
        b"garbage",
        b"--xx\r\ngarbage",
        b"--" + B + b"\r\n\r\n\r\n",
        b"--" + B + b"garbage",
    ):
        assert _same(body)[0] == "error"
    for _ in range(200):
        _same(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))


# --- generated bodies -------------------------------------------------------------------------


def _random_boundary(rng: random.Random, plain: bool) -> bytes:
    choice = rng.randrange(4 if plain else 6)
    if choice == 0:
        return rng.randbytes(16).hex().encode()  # httpx, requests
    if choice == 1:
        alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return ("----WebKitFormBoundary" + "".join(rng.choices(alnum, k=16))).encode()
    if choice == 2:
        return b"-" * rng.randrange(1, 30) + rng.randbytes(4).hex().encode()  # curl, Firefox
    if choice == 3:
        return rng.choice([b"x", b"-", b"--", b"ab-", b"a'()+_,-./:=?b", b"a b"])
    return bytes(rng.choice(b"abc-\r\n ") for _ in range(rng.randrange(1, 6)))  # CR/LF inside


def _random_data(rng: random.Random, boundary: bytes, plain: bool) -> bytes:
    """Binary data salted with line breaks, dashes and (partial) boundaries."""
    delim = b"\r\n--" + boundary
    pieces = [
        lambda: rng.randbytes(rng.randrange(40)),
        lambda: rng.choice([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n-", b"\r\n--", b"\r\n\r\n"]),
        lambda: delim[: rng.randrange(len(delim))],  # a partial delimiter
        lambda: b"--" + boundary,  # the boundary without CRLF before it
        lambda: b"\n--" + boundary,
        lambda: delim + rng.choice([b"x", b"-x", b"\rx", b"-", b"\r"]),  # not a delimiter (mostly)
        lambda: rng.choice([delim + b"\r\n", delim + b"--", delim + b" \r\n", delim + b" x"]),
    ]
    weights = [30, 20, 10, 5, 5, 5, 0 if plain else 3]
    while True:
        data = b"".join(rng.choices(pieces, weights)[0]() for _ in range(rng.randrange(6)))
        if not plain or _ends_where_it_should(data, boundary):
            return data


def _ends_where_it_should(data: bytes, boundary: bytes) -> bool:
    """Whether data followed by a delimiter holds no earlier delimiter (nor makes one)."""
    delim = b"\r\n--" + boundary
    text = data + delim + b"\r\n"
    at = text.find(delim)
    while True:
        after = at + len(delim)
        if text[after : after + 2] in (b"\r\n", b"--") or text[after : after + 1] in (b" ", b"\t"):
            return at == len(data)
        at = text.find(delim, at + 1)


def _random_name(rng: random.Random, plain: bool) -> tuple[bytes, str]:
    """A Content-Disposition name parameter and the name it should give."""
    names = ["file", "model", "top_k", "a b", "café", "", "名", "a=b"]
    name = rng.choice(names if plain else [*names, "x;y", 'q"uote', "b\\s"])
    if rng.random() < 0.2:
        name = "".join(rng.choices("abcXYZ09_.-!~*", k=rng.randrange(1, 8)))
    raw = name.encode()
    key = rng.choice([b"name", b"name", b"Name", b"NAME"])
    eq = rng.choice([b"=", b"=", b" = ", b"\t="])
    token = raw and all(c in b"abcXYZ09_.-!~*" for c in raw)
    if token and rng.random() < 0.5:
        return key + eq + raw, name
    quoted = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return key + eq + b'"' + quoted + b'"', name


def _random_part(
    rng: random.Random, boundary: bytes, plain: bool
) -> tuple[bytes, tuple[str, bytes] | None]:
    """A part after its delimiter line (headers, blank line, data) and its expected result."""
    param, name = _random_name(rng, plain)
    params = [param]
    if rng.random() < 0.4:
        filename = [b'filename="a.jpg"', b"filename=a.jpg", b'filename="\xc3\xa9 1.png"']
        params.insert(rng.randrange(2), rng.choice(filename))
    if not plain and rng.random() < 0.1:
        params.append(rng.choice([b"name*=utf-8''x", b'filename="a\\\\b"', b"x=", b""]))
    sep = rng.choice([b"; ", b"; ", b";", b" ; ", b";\t"])
    disposition = rng.choice([b"form-data", b"form-data", b"Form-Data", b"attachment"])
    value = sep.join([disposition, *params]) + rng.choice([b"", b"", b" ", b"\t"])
    cd = rng.choice([b"Content-Disposition", b"content-disposition", b"CONTENT-DISPOSITION"])
    headers = [cd + rng.choice([b": ", b": ", b":", b":  ", b":\t"]) + value]
    if rng.random() < 0.4:
        content_type = rng.choice([b"Content-Type", b"content-type"]) + b": image/jpeg"
        headers.insert(rng.randrange(2), content_type)
    if not plain and rng.random() < 0.2:
        other = [b"Content-Transfer-Encoding: binary", b"Content-Length: 3", b"X-A: b", b"A : b"]
        headers.insert(rng.randrange(len(headers) + 1), rng.choice(other))
    if not plain and rng.random() < 0.05:
        headers = [h for h in headers if not h.lower().startswith(b"content-disposition")]
        name = ""
    data = _random_data(rng, boundary, plain)
    block = b"".join(header + b"\r\n" for header in headers)
    return block + b"\r\n" + data, (name, data) if b"A : b" not in headers else None


def _random_body(
    rng: random.Random, plain: bool
) -> tuple[bytes, bytes, list[tuple[str, bytes]] | None]:
    """A body, its boundary and the parts it was built from (None where it is not well-formed).

    A plain body has the forms clients send (any data, transport padding, epilogue); the others
    add preambles, odd boundaries, names and headers, bad padding, no closing delimiter.
    """
    boundary = _random_boundary(rng, plain)
    dash = b"--" + boundary
    parts = [_random_part(rng, boundary, plain) for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 5]))]
    preamble = b"" if plain else rng.choice([b"", b"\r\n", b"\r\npreamble\r\n", b"preamble\r\n"])
    body = preamble
    regular = not preamble and b"\r" not in boundary and b"\n" not in boundary
    for i, (raw, expected) in enumerate(parts):
        paddings = [b"", b"", b"", b" ", b"\t "] + ([] if plain else [b"x", b" x"])
        padding = rng.choice(paddings) if i else b""
        body += (b"\r\n" if i else b"") + dash + padding + b"\r\n" + raw
        # The data must end its part: no delimiter inside it, none made with what follows.
        regular = (
            regular
            and expected is not None
            and b"x" not in padding
            and _ends_where_it_should(expected[1], boundary)
        )
    if plain or rng.random() < 0.8:
        body += (b"\r\n" if parts else b"") + dash + b"--"
        body += rng.choice([b"", b"\r\n", b"\r\n" + rng.randbytes(rng.randrange(20))])
    else:
        regular = False
    return body, boundary, [expected for _, expected in parts if expected] if regular else None


def test_generated_bodies_match_python_multipart() -> None:
    rng = random.Random(20240517)
    counts = {"plain and fast": 0, "odd and fast": 0, "odd and fallback": 0}
    for i in range(4000):
        plain = i % 2 == 0
        body, boundary, expected = _random_body(rng, plain)
        outcome = _same(body, boundary)
        if expected is not None:
            assert outcome == ("ok", expected), body
        fast = _fast(body, boundary)
        if plain:
            assert expected is not None and fast == expected, body  # read fast, and right
            counts["plain and fast"] += 1
        else:
            counts["odd and fast" if fast is not None else "odd and fallback"] += 1
    assert counts["plain and fast"] == 2000, counts
    assert counts["odd and fast"] > 50 and counts["odd and fallback"] > 500, counts


def test_mutated_bodies_match_python_multipart() -> None:
    rng = random.Random(99)
    for _ in range(1500):
        body, boundary, _ = _random_body(rng, rng.random() < 0.5)
        if not body:
            continue
        for _ in range(3):
            at = rng.randrange(len(body))
            mutation = rng.randrange(4)
            if mutation == 0:
                mutated = body[:at]
            elif mutation == 1:
                mutated = body[:at] + bytes([rng.choice(b'\r\n- \t"a\\;:')]) + body[at + 1 :]
            elif mutation == 2:
                mutated = body[:at] + body[at + 1 :]
            else:
                mutated = body[:at] + rng.choice([b"\r\n", b"--", b"\r\n--" + boundary]) + body[at:]
            _same(mutated, boundary)


def test_httpx_bodies_with_random_files() -> None:
    rng = random.Random(3)
    for _ in range(200):
        files = {"file": ("a.jpg", rng.randbytes(rng.randrange(3000)), "image/jpeg")}
        data = {"top_k": str(rng.randrange(10))} if rng.random() < 0.7 else {}
        body, boundary = _client_body(files, data)
        fast = _fast(body, boundary)
        assert fast is not None
        assert _same(body, boundary) == ("ok", fast)
