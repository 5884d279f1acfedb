"""Preprocess an image file by hand from a model card: Pillow and numpy, no project code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from service.contract.model_card import ModelCard

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
             "box": Image.Resampling.BOX}  # fmt: skip


def tensor_by_hand(path: Path, card: ModelCard) -> np.ndarray:
    """Open a file with Pillow and apply the manifest's colour, resize, scale, mean and std."""
    spec = card.input
    size = (spec.resize.width, spec.resize.height)
    with Image.open(path) as opened:
        image = opened.convert("RGB" if spec.color == "rgb" else "L")
    if image.size != size:
        image = image.resize(size, _RESAMPLE[spec.resize.resample])
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    x = (pixels * spec.scale - np.array(spec.mean)) / np.array(spec.std)
    return x.transpose(2, 0, 1).astype(spec.dtype)
