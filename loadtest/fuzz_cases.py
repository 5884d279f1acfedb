"""Hypothesis strategies of client mistakes for ``loadtest.fuzz``: one per source of requests.

Every strategy draws a ``FuzzCase``, a request as it goes on the wire (method, target, headers and
body as bytes), so that odd bytes reach the server as they are. Images come from
``loadtest.fuzz_images``; they and the tensors get their contents from numpy generators seeded by
a drawn integer: Hypothesis explores the parameters (mode, format, size, mangling, shape, value
type), not millions of pixel values.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

import httpx
import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from loadtest.fuzz_images import encode_image, images

PREDICT = b"/predict"
CT = b"Content-Type"
JSON_CT = (CT, b"application/json")


@dataclass(frozen=True)
class FuzzCase:
    """One request as it goes on the wire."""

    source: str
    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    chunks: int = 0  # > 0: sent with Transfer-Encoding: chunked, in this many chunks
    length: bytes | None = None  # a Content-Length written as is (the connection is then closed)

    def encode(self, host: bytes) -> bytes:
        """The request's bytes."""
        head = [self.method + b" " + self.target + b" HTTP/1.1", b"Host: " + host]
        head += [name + b": " + value for name, value in self.headers]
        body = self.body
        if self.length is not None:
            head += [b"Content-Length: " + self.length, b"Connection: close"]
        elif self.chunks:
            head.append(b"Transfer-Encoding: chunked")
            step = max(1, -(-len(body) // self.chunks))
            parts = [body[i : i + step] for i in range(0, len(body), step)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        elif body or self.method in (b"POST", b"PUT", b"PATCH"):
            head.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def describe(self, limit: int = 160) -> str:
        """A one-line account of the request, its body cut at ``limit`` bytes."""
        headers = ", ".join(f"{n.decode('latin-1')}: {v[:80]!r}" for n, v in self.headers)
        more = "..." if len(self.body) > limit else ""
        extra = f" chunked x{self.chunks}" if self.chunks else ""
        extra += f" Content-Length: {self.length!r}" if self.length is not None else ""
        return (
            f"[{self.source}] {self.method.decode('latin-1')} {self.target[:200]!r} "
            f"{{{headers}}} body {len(self.body)} bytes {self.body[:limit]!r}{more}{extra}"
        )


@dataclass(frozen=True)
class Served:
    """Names, versions and input shapes of the served models, from GET /models."""

    names: tuple[str, ...]
    versions: tuple[str, ...]  # "name:version"
    shapes: tuple[tuple[int, int, int], ...]

    @classmethod
    def read(cls, url: str) -> Served:
        """Ask the service at ``url``; ValueError when what answers is not the service."""
        resp = httpx.get(url + "/models", timeout=30)
        resp.raise_for_status()
        try:
            models = resp.json()["models"]
            return cls(
                names=tuple(m["name"] for m in models),
                versions=tuple(
                    f"{m['name']}:{v['version']}" for m in models for v in m["versions"]
                ),
                shapes=tuple(sorted({tuple(m["input"]["shape"]) for m in models})),
            )
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{url}/models: not the service's list of models") from None


def form(parts: list[tuple[bytes, bytes]], boundary: bytes, eol: bytes = b"\r\n") -> bytes:
    """A multipart body of (part headers, data) parts."""
    out = b""
    for headers, data in parts:
        out += b"--" + boundary + eol + headers + eol + eol + data + eol
    return out + b"--" + boundary + b"--" + eol


def _disposition(name: str, filename: str | None = "x") -> bytes:
    text = f'Content-Disposition: form-data; name="{name}"'
    if filename is not None:
        text += f'; filename="{filename}"'
    return text.encode("utf-8")


@st.composite
def image_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """Odd images sent raw, as a form or as base64 JSON, one or many."""
    count = draw(st.one_of(st.just(1), st.integers(1, 4), st.sampled_from([31, 32, 33])))
    first = draw(images(served.shapes))
    datas = [first] + [first if i % 2 else draw(images(served.shapes)) for i in range(1, count)]
    how = draw(st.sampled_from(["raw", "form", "json"]))
    if how == "raw":
        ctype = draw(st.sampled_from([b"image/png", b"image/jpeg", b"image/x-anything", b"image/"]))
        return FuzzCase("image", b"POST", PREDICT, ((CT, ctype),), first)
    if how == "form":
        boundary = b"fuzz" + str(draw(st.integers(0, 10**9))).encode()
        body = form([(_disposition("file"), d) for d in datas], boundary)
        return FuzzCase(
            "image", b"POST", PREDICT, ((CT, b"multipart/form-data; boundary=" + boundary),), body
        )
    encoded = [base64.b64encode(d).decode("ascii") for d in datas]
    if draw(st.booleans()):
        encoded = [f"data:image/png;base64,{e}" for e in encoded]
    key = "image" if count == 1 and draw(st.booleans()) else "images"
    members = {key: encoded[0] if key == "image" else encoded}
    return FuzzCase("image", b"POST", PREDICT, (JSON_CT,), json.dumps(members).encode())


def number_text() -> st.SearchStrategy[str]:
    """JSON number tokens: ordinary, past int64, past int()'s 4,300 digits, non-standard."""
    return st.one_of(
        st.integers().map(str),
        st.integers(-(2**70), 2**70).map(str),
        st.integers(1, 6000).map(lambda n: "9" * n),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-0", "1E-400"]),
    )


def json_text(max_leaves: int = 30) -> st.SearchStrategy[str]:
    """JSON text of every type and depth, with a few almost-JSON tokens."""
    scalar = st.one_of(
        st.sampled_from(["null", "true", "false"]),
        number_text(),
        st.text(max_size=20).map(json.dumps),
        st.sampled_from(['"\\ud800"', '"\\u0000"', '"\\x"', "'a'", "01", "[1,]", "{", "]"]),
    )
    return st.recursive(
        scalar,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(st.text(max_size=8).map(json.dumps), inner), max_size=5).map(
                lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
            ),
        ),
        max_leaves=max_leaves,
    )


@st.composite
def json_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """JSON bodies: any value under any of the known keys, any top level, odd encodings."""
    keys = ["image", "images", "tensor", "model", "top_k", "other", ""]
    keys += ["latency_budget_ms", "min_accuracy", "family", "fallback"]  # routing by objective
    values = {
        "model": st.one_of(st.sampled_from(served.names + served.versions), json_text(3)),
        "top_k": st.one_of(st.integers(-3, 12).map(str), json_text(3)),
    }
    chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
    members = [f"{json.dumps(k)}:{draw(values.get(k, json_text()))}" for k in chosen]
    text = "{" + ",".join(members) + "}" if draw(st.integers(0, 9)) else draw(json_text())
    if draw(st.integers(0, 9)) == 0:  # deep or many arrays: the parser's own limits
        text = draw(st.sampled_from(["[", "[],", "{}"])) * draw(st.integers(100, 80_000))
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "utf-32", "utf-8-sig", "latin-1"]))
    body = text.encode(encoding, "replace")
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    ctype = draw(
        st.sampled_from([b"application/json", b"application/JSON; charset=utf-8", b"a/b+json"])
    )
    return FuzzCase("json", b"POST", PREDICT, ((CT, ctype),), body)


@st.composite
def tensor_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """Tensors of every rank, shape and value type, most at or next to a served model's shape."""
    c, h, w = draw(st.sampled_from(served.shapes))
    kind = draw(st.sampled_from(["model", "model", "batch", "off", "random"]))
    shape: tuple[int, ...] = {
        "model": (c, h, w),
        "batch": (draw(st.sampled_from([0, 1, 2, 7, 32, 33])), c, h, w),
        "off": (c + draw(st.integers(-1, 1)), h + draw(st.integers(-1, 1)), w),
        "random": tuple(draw(st.lists(st.integers(0, 6), max_size=7))),
    }[kind]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = draw(st.sampled_from(["float", "int", "bool", "huge", "token"]))
    if values == "float":
        arr: np.ndarray = rng.normal(0, draw(st.sampled_from([1.0, 1e30, 1e300])), shape)
    elif values == "int":
        arr = rng.integers(-(2**62), 2**62, shape) // rng.integers(1, 2**60, shape)
    elif values == "bool":
        arr = rng.random(shape) < 0.5
    else:
        arr = rng.integers(0, 10, shape)
    text = json.dumps(arr.tolist())
    if values in ("huge", "token") and "0" in text:  # one number of many digits or odd form
        big = "1" + "0" * draw(st.integers(19, 5000))
        text = text.replace("0", big if values == "huge" else draw(number_text()), 1)
    if draw(st.integers(0, 4)) == 0:  # one special value, or a ragged or mistyped row
        special = draw(st.sampled_from(["null", '"x"', "[]", "[1,2]", "NaN", "true", "{}"]))
        at = text.find("0")
        text = text if at < 0 else text[:at] + special + text[at + 1 :]
    if draw(st.integers(0, 9)) == 0:
        text = draw(st.sampled_from(["null", "{}", '"abc"', "1", "[]", "true"]))
    body = '{"tensor": ' + text
    if draw(st.booleans()):
        body += ', "top_k": ' + draw(st.sampled_from(["1", "3", "0", "99", '"2"', "null", "1.5"]))
    return FuzzCase("tensor", b"POST", PREDICT, (JSON_CT,), (body + "}").encode())


BOUNDARY_CHARS = "abcXYZ0129'()+_,-./:=? \"\\;é\x00\r\n"


@st.composite
def form_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """Multipart bodies with odd boundaries, part headers, names, line endings and ends."""
    boundary = draw(st.text(BOUNDARY_CHARS, max_size=80)).encode("utf-8")
    if draw(st.booleans()):
        boundary = b"b" + str(draw(st.integers(0, 10**6))).encode()
    image = encode_image("L", "PNG", {}, (8, 8), draw(st.integers(0, 99)))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["file", "file", "model", "top_k", "other", "", "fïlé"]))
        headers = draw(
            st.sampled_from(
                [
                    _disposition(name),
                    _disposition(name, None),
                    b"Content-Disposition: form-data",
                    b"Content-Disposition: attachment; name=" + name.encode("utf-8"),
                    _disposition(name) + b"\r\nContent-Type: image/png",
                    _disposition(name) + b"\r\nX-\xff: \x00",
                    b"no colon here",
                    b"",
                ]
            )
        )
        data = draw(
            st.one_of(
                st.just(image),
                st.sampled_from(served.names + served.versions).map(str.encode),
                st.binary(max_size=64),
                st.text(max_size=20).map(lambda t: t.encode("utf-8")),
            )
        )
        parts.append((headers, data))
    body = form(parts, boundary, draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])))
    ending = draw(st.sampled_from(["keep", "keep", "cut", "no-close", "preamble", "other"]))
    if ending == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    elif ending == "no-close":
        body = body.rsplit(b"--" + boundary + b"--", 1)[0]
    elif ending == "preamble":
        body = b"preamble\r\n" + body + b"epilogue"
    elif ending == "other":
        boundary = boundary[::-1] + b"x"
    param = draw(
        st.sampled_from([b"boundary=%s", b'boundary="%s"', b"charset=x; boundary=%s", b"bound=%s"])
    )
    ctype = b"multipart/form-data; " + param % boundary
    if draw(st.integers(0, 9)) == 0:
        ctype = b"multipart/form-data"
    chunks = draw(st.sampled_from([0] * 5 + [1, 3]))
    return FuzzCase("form", b"POST", PREDICT, ((CT, ctype),), body, chunks)


def _query_value(served: Served) -> st.SearchStrategy[bytes]:
    text = st.one_of(
        st.sampled_from(served.names + served.versions),
        st.sampled_from(served.names).map(lambda n: n + ":²"),
        st.sampled_from(served.names).map(lambda n: n + ":" + "9" * 5000),
        st.text(max_size=12),
        st.integers(-5, 12).map(str),
    )
    return st.one_of(
        text.map(lambda t: quote(t, safe="").encode("ascii")),  # percent-encoded UTF-8
        text.map(lambda t: t.encode("utf-8")),  # raw UTF-8 bytes in the request line
        st.sampled_from([b"%", b"%ZZ", b"%C2", b"%FF%FE", b"%00", b"a+b", b"%2B", b";x=1"]),
    )


@st.composite
def http_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """Odd methods, paths, query strings, headers and Content-Lengths around every route."""
    method = draw(st.sampled_from([b"POST"] * 4 + [b"GET", b"PUT", b"DELETE", b"OPTIONS", b"HEAD"]))
    models = [quote(n).encode() for n in served.names]
    path = draw(
        st.sampled_from(
            [PREDICT] * 4
            + [b"/models", b"/healthz", b"/readyz", b"/metrics", b"/openapi.json", b"/v2"]
            + [b"/models/" + m for m in models]
            + [b"/v2/models/" + m + b"/infer" for m in models]
            + [b"/models/%C2%B2", b"/models/\xc3\xa9", b"/predict/", b"//predict", b"/%2e%2e/x"]
            + [b"/v2/models/x/versions/%C2%B2/infer", b"/v2/models//infer"]
        )
    )
    keys = st.sampled_from(
        [b"model", b"top_k", b"other", b"", b"m\xc3\xa9", b"latency_budget_ms", b"min_accuracy"]
    )
    pairs = draw(st.lists(st.tuples(keys, _query_value(served)), max_size=4))
    target = path + (b"?" + b"&".join(k + b"=" + v for k, v in pairs) if pairs else b"")
    headers = [(CT, draw(st.sampled_from([b"image/png", b"IMAGE/PNG", b"image/png; x=\xff"])))]
    if draw(st.booleans()):
        name = draw(st.sampled_from([b"X-Fuzz", b"Content-Type", b"Accept", b"Expect", b"X-\xe9"]))
        value = draw(st.binary(max_size=30)).replace(b"\r", b"").replace(b"\n", b"")
        headers.append((name, value))
    body = encode_image("L", "PNG", {}, (8, 8), draw(st.integers(0, 99)))
    length = None
    if draw(st.integers(0, 9)) == 0:  # the same length written oddly, or no length at all
        n = str(len(body)).encode()
        forms = [b"00" + n, b" " + n, b"+" + n, n + b", " + n, b"\xc2\xb2", b"-1", b"9" * 30, b""]
        length = draw(st.sampled_from(forms))
    return FuzzCase("http", method, target, tuple(headers), body, length=length)


@st.composite
def v2_requests(draw: st.DrawFn, served: Served) -> FuzzCase:
    """Open Inference Protocol infer bodies: odd datatypes, shapes, data and binary parts."""
    c, h, w = draw(st.sampled_from(served.shapes))
    path = b"/v2/models/" + quote(draw(st.sampled_from(served.names))).encode()
    if draw(st.integers(0, 3)) == 0:
        path += b"/versions/" + draw(st.sampled_from([b"1", b"2", b"%C2%B2", b"9" * 40]))
    datatypes: list[Any] = [
        "FP32",
        "FP64",
        "FP16",
        "INT64",
        "UINT8",
        "BOOL",
        "BF16",
        "BYTES",
        "X",
        [1],
        {},
        3,
    ]
    n = draw(st.sampled_from([0, 1, 1, 2, 33]))
    if draw(st.booleans()):  # a request the model takes, to mangle in one place below
        datatype, name = draw(st.sampled_from(["FP32", "BYTES"])), "input"
        shape = [n, c, h, w] if datatype == "FP32" else [n]
    else:
        datatype, name = draw(st.sampled_from(datatypes)), draw(st.sampled_from(["input", "x"]))
        shape = draw(
            st.one_of(
                st.just([n, c, h, w]),
                st.lists(st.integers(-2, 40), max_size=9),
                st.just([2**40, 2**40]),
                st.just([0, 2**62, 2**62]),  # no element, yet no numpy array either
            )
        )
    count = math.prod(shape) if all(d >= 0 for d in shape) else 3
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": "@shape"}
    shape_text = json.dumps(shape) if draw(st.integers(0, 9)) else draw(json_text(4))
    binary, data_text = b"", "null"
    if datatype == "BYTES":
        image = draw(images(served.shapes))
        if draw(st.booleans()):
            binary = b"".join(struct.pack("<I", len(image)) + image for _ in range(n))
            extra = draw(st.sampled_from([0, 0, 1]))
            entry["parameters"] = {"binary_data_size": len(binary) + extra}
        elif draw(st.integers(0, 4)):  # JSON strings hold text: a byte-per-character image
            entry["data"] = [image.decode("latin-1")] * min(count, 40)
        else:
            entry["data"] = "@data"  # a string legal in JSON with no UTF-8 form
            data_text = '["\\ud800"]'
    elif draw(st.booleans()) and count <= 200_000:
        dtypes = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT64": "<i8"}
        values = rng.normal(0, draw(st.sampled_from([1.0, 1e5, 1e40])), count)
        with np.errstate(all="ignore"):
            binary = values.astype(dtypes.get(str(datatype), "u1")).tobytes()
        binary = binary[: len(binary) - draw(st.sampled_from([0, 0, 1]))]
        entry["parameters"] = {"binary_data_size": len(binary)}
    else:
        entry["data"] = "@data"
        values = rng.normal(0, 1, min(count, 200_000))
        data_text = json.dumps(values.tolist()) if draw(st.booleans()) else draw(json_text(10))
    if draw(st.integers(0, 9)) == 0:  # Triton's shared memory, which this server does not offer
        region: Any = draw(st.sampled_from(["r", "", [1], {}, None]))
        entry.setdefault("parameters", {})["shared_memory_region"] = region
    header: dict[str, Any] = {"inputs": [entry]}
    if draw(st.integers(0, 5)) == 0:
        flag = draw(st.sampled_from([True, False, "false", 0, None]))
        header["parameters"] = {"binary_data_output": flag}
    if draw(st.booleans()):
        outputs: Any = draw(st.sampled_from([[{"name": "logits"}], [{"name": "y"}], "x", [1]]))
        header["outputs"] = outputs
        if isinstance(outputs, list) and isinstance(outputs[0], dict):
            k = draw(st.sampled_from([0, 3, -1, True]))
            outputs[0] = {**outputs[0], "parameters": {"classification": k}}
    text = json.dumps(header).replace('"@shape"', shape_text).replace('"@data"', data_text)
    headers = [(CT, b"application/json")]
    if binary or draw(st.integers(0, 4)) == 0:
        size = len(text.encode())
        length = draw(st.sampled_from([str(size), "0", "x", str(size + 1), f"{size:020d}"]))
        headers = [(CT, b"application/octet-stream")]
        headers.append((b"Inference-Header-Content-Length", length.encode()))
    return FuzzCase("v2", b"POST", path + b"/infer", tuple(headers), text.encode() + binary)


def schema_requests(url: str) -> st.SearchStrategy[FuzzCase]:
    """schemathesis cases of every operation of the served OpenAPI document, valid and not."""
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    strategies = [
        cast(Any, result).ok().as_strategy(generation_mode=mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    def to_case(case: Any) -> FuzzCase:
        kwargs = case.as_transport_kwargs(base_url=url)
        allowed = ("method", "url", "headers", "params", "data", "json", "files", "cookies")
        try:
            prepared = requests.Request(
                **{k: v for k, v in kwargs.items() if k in allowed}
            ).prepare()
        except (ValueError, TypeError, UnicodeError):
            reject()
        parts = httpx.URL(prepared.url or "/")
        target = parts.raw_path
        skip = {"content-length", "host", "transfer-encoding", "connection"}
        headers = tuple(
            (k.encode("latin-1"), v.encode("latin-1") if isinstance(v, str) else bytes(v))
            for k, v in prepared.headers.items()
            if k.lower() not in skip
        )
        raw: Any = prepared.body or b""
        body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        return FuzzCase("schema", (prepared.method or "GET").encode("ascii"), target, headers, body)

    return st.one_of(strategies).map(to_case)
