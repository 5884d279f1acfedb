"""Turn decoded images into model input tensors exactly as a model card's InputSpec says.

Only Pillow and numpy: this is the reference preprocessing that the offline evaluation and the
online service both run, so accuracy measured offline holds for what is served.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from PIL import Image

from service.contract.model_card import InputSpec

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_GREY_MODES = {"L", "LA", "1"}
# A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, Image.draft) only
# while that stays at least this many times the model's input on both axes, so that the final
# resize still averages several decoded pixels into each input pixel.
DRAFT_MARGIN = 2
# High-bit images are brought to 8 bits in bands of about this many pixels, so that the
# temporaries (numpy indexes are 8 bytes, float64 16-bit maths 8 bytes) stay a few MB.
_BAND_PIXELS = 1 << 18
# 16-bit value -> 8-bit value: round(v / 257), exact for 255 * 257 = 65535.
_U16_TO_U8 = np.clip(np.rint(np.arange(65536) / 257.0), 0, 255).astype(np.uint8)
_U16_TO_U8.setflags(write=False)


def draft_scale(width: int, height: int, spec: InputSpec) -> int:
    """1, 2, 4 or 8: how much smaller a JPEG of ``width`` x ``height`` is decoded for ``spec``.

    The largest of 8, 4, 2 that keeps the decoded image at least ``DRAFT_MARGIN`` times the
    model's input on both axes, else 1 (full size): the rule of Pillow's ``Image.draft`` asked
    for that size, so Pillow and the libjpeg-turbo fast path decode the same pixels.
    """
    fit = min(
        width // (DRAFT_MARGIN * spec.resize.width), height // (DRAFT_MARGIN * spec.resize.height)
    )
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def draft(image: Image.Image, spec: InputSpec) -> int:
    """Ask Pillow to decode a not yet loaded JPEG smaller (draft_scale); returns the scale.

    Other formats, loaded images and JPEGs near the model's size are left alone (scale 1).
    """
    scale = draft_scale(image.width, image.height, spec)
    if scale == 1 or image.format not in ("JPEG", "MPO") or not getattr(image, "tile", None):
        return 1
    want = (DRAFT_MARGIN * spec.resize.width, DRAFT_MARGIN * spec.resize.height)
    image.draft(None, want)
    return scale


def _bands(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, pixels) of consecutive bands of rows of a one-band image."""
    rows = max(1, _BAND_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        band = image.crop((0, top, image.width, min(image.height, top + rows)))
        yield top, np.asarray(band)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16/32-bit integer and float images to 8-bit 'L' by scaling, never by clipping.

    Computed band by band into one uint8 array: the memory beyond the image itself is its 8-bit
    copy plus one band's temporaries, never a full-size int64 or float64 copy.
    """
    if image.mode not in _HIGH_BIT_MODES and image.mode != "F":
        return image
    out = np.empty((image.height, image.width), dtype=np.uint8)
    if image.mode in _HIGH_BIT_MODES:
        # 16-bit data: full range 0..65535 maps onto 0..255; 32-bit values beyond it saturate.
        for top, band in _bands(image):
            if band.dtype.itemsize > 2:
                band = np.clip(band, 0, 65535)
            out[top : top + len(band)] = _U16_TO_U8[band]
        return Image.fromarray(out)
    # Float data in 0..1 or 0..255, whichever its largest finite-or-infinite value says.
    peak = -np.inf
    for _, band in _bands(image):
        peak = max(peak, float(np.fmax.reduce(band, axis=None, initial=-np.inf)))
    hi = 1.0 if peak <= 1.0 else 255.0
    for top, band in _bands(image):
        scaled = band.astype(np.float64)  # in place below: one float64 band at a time
        scaled /= hi
        scaled *= 255.0
        np.nan_to_num(scaled, copy=False, nan=0.0)
        np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled)
        out[top : top + len(band)] = scaled  # whole numbers in 0..255: exact as uint8
    return Image.fromarray(out)


def convert_color(image: Image.Image, color: str) -> Image.Image:
    """Convert any Pillow mode (RGB, RGBA, L, LA, P, CMYK, I;16, ...) to 'RGB' or 'L'."""
    image = _to_8bit(image)
    target = "RGB" if color == "rgb" else "L"
    if image.mode == target:
        return image
    if image.mode == "P" and "transparency" in image.info:
        # A palette image's colours do not depend on its transparency: straight to RGB or L
        # gives the pixels that going through RGBA gives, without a full-size RGBA copy. The
        # transparency is dropped from a copy (1 byte per pixel) so that Pillow does not warn.
        image = image.copy()
        del image.info["transparency"]
    return image.convert(target)


def image_to_uint8(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Colour-convert and resize a Pillow image; returns uint8 [H, W, C].

    A JPEG not loaded yet is decoded smaller first when it is far larger than the model's input
    (``draft``); any other image is used at its full size.
    """
    draft(image, spec)
    image = _to_8bit(image)
    size = (spec.resize.width, spec.resize.height)
    if spec.color == "rgb" and image.mode in _GREY_MODES and image.size != size:
        # Grey to RGB copies the grey value into each channel (an alpha is dropped either way),
        # and resizing treats channels alike: resizing the grey image first gives the same
        # pixels without a full-size RGB copy.
        image = image.convert("L").resize(size, _RESAMPLE[spec.resize.resample])
    image = convert_color(image, spec.color)
    if image.size != size:
        image = image.resize(size, _RESAMPLE[spec.resize.resample])
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def resize_uint8(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 [H, W, C] pixels already in the spec's colour, resized as image_to_uint8 would."""
    size = (spec.resize.width, spec.resize.height)
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    mode = "RGB" if pixels.shape[2] == 3 else "L"
    image = Image.fromarray(pixels if mode == "RGB" else pixels[:, :, 0], mode=mode)
    return image_to_uint8(image, spec)


@lru_cache(maxsize=64)
def _lookup_table(
    scale: float, mean: tuple[float, ...], std: tuple[float, ...], dtype: str
) -> np.ndarray:
    """[C, 256]: every 8-bit value of every channel, scaled and normalised in float32."""
    values = np.arange(256, dtype=np.float32) * np.float32(scale)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]
    inv_std = np.float32(1.0) / np.asarray(std, dtype=np.float32)[:, None]
    table = ((values[None, :] - mean_) * inv_std).astype(np.dtype(dtype))
    table.setflags(write=False)
    return table


def normalize_uint8(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 images [H, W, C] or [N, H, W, C] to the model's float tensor [C,H,W] / [N,C,H,W].

    Each value is ``(v * scale - mean[c]) / std[c]`` computed in float32 (as a multiplication by
    the float32 reciprocal of std), then cast to the model's dtype. A uint8 pixel has only 256
    values, so these are computed once per spec into a table and looked up: the same bits as the
    arithmetic, at half its cost per image.
    """
    table = _lookup_table(spec.scale, tuple(spec.mean), tuple(spec.std), spec.dtype)
    channels = images.shape[-1]
    out = np.empty((*images.shape[:-3], channels, *images.shape[-3:-1]), dtype=table.dtype)
    for c in range(channels):
        np.take(table[c], images[..., c], out=out[..., c, :, :], mode="clip")
    return out


def preprocess_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """One Pillow image to the model's input tensor [C, H, W]."""
    return normalize_uint8(image_to_uint8(image, spec), spec)
