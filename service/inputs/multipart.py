"""Split a multipart/form-data body into (field name, bytes) parts with python-multipart.

python-multipart's callback parser, fed the whole body at once. A hand-written splitter
(``bytes.find`` on plain bodies) was measured against it end to end on the current service and
gained nothing beyond noise (docs/performance.md, ``python -m loadtest.hotpath_ab``), so the
library does it all.
"""

from __future__ import annotations

from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BadRequest


def split_form(body: bytes, boundary: bytes | None) -> list[tuple[str, bytes]]:
    """The body's (Content-Disposition name, data) parts in body order, read by python-multipart.

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
