"""Encoded images of every mode and format, mangled: the image source of ``loadtest.fuzz_cases``.

Content comes from a numpy generator seeded by a drawn integer, so Hypothesis explores the mode,
format, size and mangling rather than pixel values.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

# Images: (mode, format, save options); the last three formats are not accepted by the service.
IMAGE_SAVES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("RGB", "JPEG", {}),
    ("RGB", "JPEG", {"progressive": True, "quality": 40}),
    ("RGB", "JPEG", {"subsampling": 0, "quality": 95}),
    ("L", "JPEG", {}),
    ("CMYK", "JPEG", {}),
    ("1", "PNG", {}),
    ("L", "PNG", {}),
    ("LA", "PNG", {}),
    ("P", "PNG", {"transparency": 0}),
    ("RGB", "PNG", {}),
    ("RGBA", "PNG", {}),
    ("I;16", "PNG", {}),
    ("I", "TIFF", {}),
    ("I;16B", "TIFF", {}),
    ("F", "TIFF", {}),
    ("CMYK", "TIFF", {"compression": "tiff_lzw"}),
    ("YCbCr", "TIFF", {}),
    ("LAB", "TIFF", {}),
    ("PA", "TIFF", {}),
    ("RGB", "TIFF", {"compression": "tiff_deflate"}),
    ("RGB", "BMP", {}),
    ("P", "BMP", {}),
    ("P", "GIF", {}),
    ("RGB", "WEBP", {"quality": 50}),
    ("RGBA", "WEBP", {"lossless": True}),
    ("RGB", "PPM", {}),
    ("I", "PPM", {}),
    ("F", "PPM", {}),
    ("RGB", "ICO", {}),
    ("RGB", "TGA", {}),
    ("RGB", "PCX", {}),
)


def _pixels(mode: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    if mode in ("I", "F"):
        arr = rng.normal(1000, 5000, (h, w)) if mode == "I" else rng.normal(0.5, 2.0, (h, w))
        if mode == "F" and rng.random() < 0.3:
            arr.flat[rng.integers(0, arr.size, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
        return Image.fromarray(arr.astype(np.int32 if mode == "I" else np.float32))
    if mode.startswith("I;16"):
        raw = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return Image.frombytes(mode, (w, h), raw.astype(">u2" if mode == "I;16B" else "<u2"))
    # Smooth content (a small noise field blown up), so that JPEG and PNG stay small.
    noise = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), np.uint8)
    image = Image.fromarray(noise).resize((w, h), Image.Resampling.BILINEAR)
    return image.convert("P").convert("PA") if mode == "PA" else image.convert(mode)


def encode_image(
    mode: str, fmt: str, options: dict[str, Any], size: tuple[int, int], n: int
) -> bytes:
    """An image of ``mode`` and ``size`` encoded as ``fmt``, its content seeded by ``n``."""
    image = _pixels(mode, size, np.random.default_rng(n))
    buf = io.BytesIO()
    try:
        image.save(buf, fmt, **options)
    except (OSError, ValueError, KeyError, TypeError):  # a mode the format cannot hold
        buf = io.BytesIO()
        image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def patch_size(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    """The image with the size in its header replaced (PNG, JPEG, GIF, BMP); others unchanged."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG") and len(data) >= 33:
        struct.pack_into(">II", out, 16, width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        if fix_crc:
            struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0 and at + 9 <= len(data):
                struct.pack_into(">HH", out, at + 5, height & 0xFFFF, width & 0xFFFF)
                break
    elif data.startswith(b"GIF") and len(data) >= 10:
        struct.pack_into("<HH", out, 6, width & 0xFFFF, height & 0xFFFF)
    elif data.startswith(b"BM") and len(data) >= 26:
        signed = [(v + 2**31) % 2**32 - 2**31 for v in (width, height)]
        struct.pack_into("<ii", out, 18, *signed)
    return bytes(out)


@st.composite
def images(draw: st.DrawFn, shapes: Sequence[tuple[int, int, int]]) -> bytes:
    """Encoded images of every mode and format, 1 px to far over the size of the models'
    inputs ``shapes`` ([C, H, W] each), mangled."""
    mode, fmt, options = draw(st.sampled_from(IMAGE_SAVES))
    side = st.one_of(st.integers(1, 40), st.integers(1, 300), st.sampled_from([1, 2, 7, 8, 9]))
    size = draw(st.tuples(side, side))
    if draw(st.integers(0, 19)) == 0:  # big: the paths that decode a JPEG smaller
        _, h, w = draw(st.sampled_from(shapes))
        size = (draw(st.integers(2, 24)) * w, draw(st.integers(2, 24)) * h)
    data = encode_image(mode, fmt, options, size, draw(st.integers(0, 2**16)))
    mangle = draw(st.sampled_from(["none"] * 4 + ["truncate", "flip", "size", "splice", "tag"]))
    if mangle == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif mangle == "flip":
        arr = bytearray(data)
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            arr[i] = draw(st.integers(0, 255))
        data = bytes(arr)
    elif mangle == "size":
        dim = st.sampled_from([0, 1, 2, 255, 256, 4097, 65535, 2**31 - 1, 2**32 - 1, -1, -7])
        data = patch_size(data, draw(dim), draw(dim), draw(st.booleans()))
    elif mangle == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=64)) + data[at:]
    elif mangle == "tag":  # a TIFF tag of another type (float strip offsets broke Pillow's seek)
        data = retype_tiff_tag(data, draw(st.integers(0, 63)), draw(st.integers(0, 13)))
    return data


def retype_tiff_tag(data: bytes, pick: int, new_type: int) -> bytes:
    """A little-endian TIFF with the type of its first IFD's entry ``pick`` (modulo the count)
    set to ``new_type``; anything else as it is."""
    if not data.startswith(b"II*\x00") or len(data) < 8:
        return data
    ifd = struct.unpack_from("<I", data, 4)[0]
    if ifd + 2 > len(data):
        return data
    count = struct.unpack_from("<H", data, ifd)[0]
    entry = ifd + 2 + 12 * (pick % max(count, 1))
    if not count or entry + 12 > len(data):
        return data
    out = bytearray(data)
    struct.pack_into("<H", out, entry + 2, new_type)
    return bytes(out)
