"""Decode common JPEGs straight to numpy with libjpeg-turbo (simplejpeg), the same pixels as Pillow.

Pillow parses a JPEG's markers in Python before its C decoder runs: for a 32x32 CIFAR-10 photo
that is ~80 us of which the decoding proper is a third. simplejpeg calls libjpeg-turbo's
TurboJPEG API with the same defaults Pillow uses (integer IDCT, fancy upsampling), so the
pixels are identical (tests/service/test_fastjpeg.py compares them, and on the CIFAR-10 test
JPEGs where present) in about a tenth of the time. Only what is known to match takes this path:
YCbCr and greyscale JPEGs decoded to RGB, greyscale JPEGs decoded to grey. Anything else (CMYK,
colour to grey, a decoder warning, simplejpeg not installed) returns None and the caller uses
Pillow, which stays the reference and produces every error message.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import simplejpeg as _simplejpeg
except ImportError:  # an optional speed-up: Pillow decodes everything without it
    _simplejpeg = None

simplejpeg: Any = _simplejpeg

JPEG_MAGIC = b"\xff\xd8\xff"

# (JPEG colour space from the header, the model's colour) -> simplejpeg's output colour space.
_TARGETS = {
    ("YCbCr", "rgb"): "RGB",
    ("Gray", "rgb"): "RGB",
    ("Gray", "gray"): "GRAY",
}


def available() -> bool:
    """True when simplejpeg is installed."""
    return simplejpeg is not None


# Start-of-frame markers (SOF0..SOF15 less DHT, JPG and DAC) and the progressive ones among them.
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_MARKERS = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def is_progressive(data: bytes) -> bool:
    """True when a JPEG's frame header says progressive, or when no frame header is found.

    libjpeg keeps every DCT coefficient of a progressive JPEG (2 bytes per sample at full size)
    whatever size it outputs, so such a JPEG costs its full size in memory.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker in _FRAME_MARKERS:
            return marker in _PROGRESSIVE_MARKERS
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return True


def jpeg_size(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, colour space) of a JPEG's header; None if the fast path cannot read it."""
    if simplejpeg is None or not data.startswith(JPEG_MAGIC):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return int(width), int(height), str(colorspace)


def decode(
    data: bytes, colorspace: str, color: str, size: tuple[int, int] = (0, 0), scale: int = 1
) -> np.ndarray | None:
    """uint8 [H, W, C] pixels of a JPEG in the model's ``color`` ('rgb' or 'gray'), else None.

    ``scale`` 2, 4 or 8 decodes the JPEG, of ``size`` (width, height), that many times smaller on
    each axis with libjpeg's DCT scaling: the pixels of Pillow's ``Image.draft``, since asking
    libjpeg-turbo for at least ``ceil(size / scale)`` picks the factor ``1 / scale``. None means
    "use Pillow": an unsupported colour conversion, another decoded size than asked, or any
    decoder complaint (strict mode turns libjpeg's warnings, e.g. a truncated file, into errors).
    """
    target = _TARGETS.get((colorspace, color))
    if target is None or simplejpeg is None:
        return None
    width, height = (-(-size[0] // scale), -(-size[1] // scale)) if scale > 1 else (0, 0)
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data, colorspace=target, strict=True, min_width=width, min_height=height
        )
    except ValueError:
        return None
    if scale > 1 and pixels.shape[:2] != (height, width):
        return None
    return pixels
