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


def jpeg_size(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, colour space) of a JPEG's header; None if the fast path cannot read it."""
    if simplejpeg is None or not data.startswith(JPEG_MAGIC):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return int(width), int(height), str(colorspace)


def decode(data: bytes, colorspace: str, color: str) -> np.ndarray | None:
    """uint8 [H, W, C] pixels of a JPEG in the model's ``color`` ('rgb' or 'gray'), else None.

    None means "use Pillow": an unsupported colour conversion, or any decoder complaint
    (strict mode turns libjpeg's warnings, e.g. a truncated file, into errors).
    """
    target = _TARGETS.get((colorspace, color))
    if target is None or simplejpeg is None:
        return None
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(data, colorspace=target, strict=True)
    except ValueError:
        return None
    return pixels
