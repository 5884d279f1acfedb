"""Preprocess images by hand from a model card and run them: Pillow, numpy, ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from service.contract.model_card import ModelCard, model_file, read_manifest

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


def top1_by_hand(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The newest version's top-1 class on uint8 images [N, H, W, C] of the model's input size,
    preprocessed by hand from its card and run by a plain ONNX Runtime session."""
    card = read_manifest(model_dir)
    spec = card.input
    x = (images.astype(np.float64) * spec.scale - np.array(spec.mean)) / np.array(spec.std)
    session = ort.InferenceSession(
        str(model_file(model_dir, card.version)), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {spec.name: x.transpose(0, 3, 1, 2).astype(spec.dtype)})[0]
    return np.asarray(logits).argmax(axis=1)


def agreement_by_hand(student_dir: Path, teacher_dir: Path, images: np.ndarray) -> float:
    """Share of ``images`` on which the student's top-1 equals the teacher's."""
    return float(np.mean(top1_by_hand(student_dir, images) == top1_by_hand(teacher_dir, images)))
