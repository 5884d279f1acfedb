"""Split a multipart/form-data body into (field name, bytes) parts, fast, with a strict fallback."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BadRequest

# python-multipart's limits (MultipartParser defaults): longer boundaries, more headers per part
# or longer header lines are errors there, so the fast path leaves them to it.
_MAX_BOUNDARY = 256
_MAX_HEADERS = 8
_MAX_HEADER_BLOCK = 4096

# The part headers the fast path accepts; any other (Content-Transfer-Encoding, ...) falls back.
_CONTENT_DISPOSITION = b"content-disposition"
_CONTENT_TYPE = b"content-type"

# Content-Disposition in the plain form every client sends: a token, then `; key=value`
# parameters whose key is a token without `*` (no RFC 2231 `name*=`) and whose value is a token or
# a quoted string without backslash, `"` or `;` inside. Within this form python-multipart's
# parse_options_header splits at every `;`, strips blanks around keys and values and unquotes
# without any escape processing, which is exactly what the expressions below do.
_KEY = rb"[!#$%&'+.^_`|~0-9A-Za-z-]+"
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = rb";[ \t]*(" + _KEY + rb")[ \t]*=[ \t]*(?:(" + _TOKEN + rb')|"([^"\\;]*)")[ \t]*'
_PARAM_RE = re.compile(_PARAM)
_DISPOSITION_RE = re.compile(rb"[ \t]*" + _TOKEN + rb"[ \t]*(?:" + _PARAM + rb")+")
# The usual value, `form-data; name="..."` with perhaps `; filename="..."`, in one match.
_USUAL_RE = re.compile(
    rb'[ \t]*form-data[ \t]*;[ \t]*name[ \t]*=[ \t]*"([^"\\;]*)"'
    rb'(?:[ \t]*;[ \t]*filename[ \t]*=[ \t]*"[^"\\;]*")?[ \t]*',
    re.IGNORECASE,
)


def split_form(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """The body's parts as (Content-Disposition name, data) in body order.

    Plain bodies (what HTTP clients and browsers send) are split with ``bytes.find``; anything else
    is handed to python-multipart (``_split_with_python_multipart``), so odd or malformed bodies get
    exactly its answer, a malformed one ``BadRequest(code="invalid_multipart")``.
    """
    parts = _split_fast(body, boundary)
    if parts is None:
        return _split_with_python_multipart(body, boundary)
    return parts


def _split_fast(body: bytes, boundary: bytes) -> list[tuple[str, bytes]] | None:
    """split_form for a plain body, or None where python-multipart must decide."""
    # A CR or LF in the boundary would let a delimiter overlap itself; the byte-wise parser
    # resumes its search differently from ours there.
    if not boundary or len(boundary) > _MAX_BOUNDARY or b"\r" in boundary or b"\n" in boundary:
        return None
    dash = b"--" + boundary
    # No preamble and no padding after the first delimiter: python-multipart rejects both (unless
    # the preamble starts with CR/LF), so both are left to it.
    if not body.startswith(dash):
        return None
    if not body.startswith(b"\r\n", len(dash)):
        return [] if body.startswith(b"--", len(dash)) else None  # `--boundary--`: no parts
    delimiter = b"\r\n" + dash
    step = len(delimiter)
    parts: list[tuple[str, bytes]] = []
    pos = len(dash) + 2
    while True:
        # Part headers: at least one, each `Name: value` CRLF, then an empty line.
        if body.startswith(b"\r\n", pos):
            return None
        end_headers = body.find(b"\r\n\r\n", pos)
        if end_headers < 0 or end_headers - pos > _MAX_HEADER_BLOCK:
            return None
        name = _part_name(body[pos:end_headers])
        if name is None:
            return None
        start = end_headers + 4
        # Part data: up to the first CRLF--boundary followed by CRLF, `--` or transport padding.
        # The boundary followed by anything else is data to python-multipart, so is it here.
        search = start
        while True:
            end = body.find(delimiter, search)
            if end < 0:
                return None
            after = end + step
            follow = body[after : after + 2]
            if follow == b"\r\n":
                pos = after + 2
                break
            if follow == b"--":
                parts.append((name, body[start:end]))
                return parts  # the epilogue, whatever it holds, is ignored
            if follow[:1] in (b" ", b"\t"):
                line_end = body.find(b"\r\n", after)
                if line_end < 0 or body[after:line_end].strip(b" \t"):
                    return None  # padding followed by anything but CRLF: malformed
                pos = line_end + 2
                break
            search = end + 1
        parts.append((name, body[start:end]))


@lru_cache(maxsize=256)  # a client sends the same few header blocks again and again
def _part_name(block: bytes) -> str | None:
    """The name parameter of a header block's Content-Disposition, or None to fall back."""
    # Every CR and LF must be part of a CRLF line break, so the block is just its lines.
    breaks = block.count(b"\r\n")
    if block.count(b"\r") != breaks or block.count(b"\n") != breaks or breaks >= _MAX_HEADERS:
        return None
    name: str | None = None
    for line in block.split(b"\r\n"):
        field, colon, value = line.partition(b":")
        field = field.lower()
        if not colon:
            return None
        if field == _CONTENT_DISPOSITION:
            # The last Content-Disposition wins, as in python-multipart's header dict.
            name = _disposition_name(value)
            if name is None:
                return None
        elif field != _CONTENT_TYPE:
            return None
    return name


def _disposition_name(value: bytes) -> str | None:
    """The name parameter of a plain Content-Disposition value, or None to fall back."""
    usual = _USUAL_RE.fullmatch(value)
    if usual is not None:
        return usual[1].decode("utf-8", "replace")
    if _DISPOSITION_RE.fullmatch(value) is None:
        return None
    name: bytes | None = None
    for key, token, quoted in _PARAM_RE.findall(value):
        if key.lower() == b"name":
            name = token or quoted
    return None if name is None else name.decode("utf-8", "replace")


def _split_with_python_multipart(body: bytes, boundary: bytes | None) -> list[tuple[str, bytes]]:
    """The body's (name, data) parts as python-multipart's callback parser reads them.

    Any body it cannot read, or one that ends before its closing boundary, is
    ``BadRequest(code="invalid_multipart")``.
    """
    if not boundary:
        raise BadRequest("multipart body without a boundary", code="invalid_multipart")
    parts: list[tuple[str, bytes]] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": [], "end": False}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        _, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        parts.append((name, b"".join(state["data"])))
        state["headers"], state["data"] = {}, []

    def on_end() -> None:
        state["end"] = True

    try:
        # Inside the try: a boundary over python-multipart's length limit is a FormParserError
        # from the constructor (a bad request, not a server error).
        parser = MultipartParser(
            boundary,
            {
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": on_end,
            },
        )
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:  # MultipartParseError and the boundary-length error
        raise BadRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from None
    if not state["end"]:
        raise BadRequest(
            "multipart body ends before its closing boundary", code="invalid_multipart"
        )
    return parts
