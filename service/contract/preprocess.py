"""Turn decoded images into model input tensors exactly as a model card's InputSpec says.

Only Pillow and numpy: this is the reference preprocessing that the offline evaluation and the
online service both run, so accuracy measured offline holds for what is served.
"""

from __future__ import annotations

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


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring 16/32-bit integer and float images to 8-bit 'L' by scaling, never by clipping."""
    if image.mode in _HIGH_BIT_MODES:
        arr = np.asarray(image, dtype=np.int64)
        # 16-bit data: full range 0..65535 maps onto 0..255 (x / 257 rounds exactly for 255*257).
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        hi = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        scaled = np.nan_to_num(arr / hi * 255.0, nan=0.0)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return image


def convert_color(image: Image.Image, color: str) -> Image.Image:
    """Convert any Pillow mode (RGB, RGBA, L, LA, P, CMYK, I;16, ...) to 'RGB' or 'L'."""
    image = _to_8bit(image)
    target = "RGB" if color == "rgb" else "L"
    if image.mode == target:
        return image
    if image.mode == "P":
        # Palette images may carry transparency; go through RGBA so it is handled like RGBA.
        image = image.convert("RGBA")
    return image.convert(target)


def image_to_uint8(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Colour-convert and resize a Pillow image; returns uint8 [H, W, C]."""
    image = convert_color(image, spec.color)
    size = (spec.resize.width, spec.resize.height)
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
