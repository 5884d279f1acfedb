"""Request bodies sent with a Content-Encoding: gzip and deflate decoded within the body limit.

Triton's clients compress infer requests on request (``request_compression_algorithm``); a body
is decompressed incrementally and refused (413) as soon as it would exceed the same byte limit an
uncompressed body has, so a small compressed body cannot expand into a large one in memory.
"""

from __future__ import annotations

import zlib

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# HTTP's 'deflate' is the zlib format (RFC 9110 8.4.1.2), as tritonclient sends it.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MAX_GZIP_MEMBERS = 64  # a gzip body may be several members one after the other; not thousands


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` without its content coding (none, gzip or deflate); 415 for another coding,
    400 for data that is not what it says, 413 past ``limit`` bytes decoded."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding!r} is not supported (gzip, deflate or none)",
            code="unsupported_encoding",
        )
    parts: list[bytes] = []
    size, rest = 0, body
    while True:  # gzip: one member after the other (RFC 1952), as gunzip reads them
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(
                f"the body is not valid {coding} data: {exc}", code="invalid_encoding"
            ) from None
        size += len(part)
        parts.append(part)
        if size > limit:
            raise PayloadTooLarge(
                f"the body decompresses to over the limit of {limit} bytes", code="body_too_large"
            )
        if not inflater.eof:
            raise BadRequest(f"the {coding} body is truncated", code="invalid_encoding")
        rest = inflater.unused_data
        if not rest.strip(b"\0"):  # gunzip, like Python's gzip, takes zero padding as the end
            return b"".join(parts)
        if wbits != _WBITS["gzip"]:
            raise BadRequest(
                f"the body has {len(rest)} bytes after its {coding} stream",
                code="invalid_encoding",
            )
        if len(parts) >= MAX_GZIP_MEMBERS:  # each costs a decompressor: bound the work
            raise BadRequest(
                f"the gzip body has over {MAX_GZIP_MEMBERS} members", code="invalid_encoding"
            )
