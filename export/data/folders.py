"""Image datasets on disk: ImageFolder trees (train/<class>/*.jpg) and CIFAR-10 pickle batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from export.data.cache import cached_arrays, content_key
from export.data.splits import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
PICKLE_DIRNAME = "cifar-10-batches-py"
PICKLE_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST = "test_batch"


def is_image_folder(root: Path) -> bool:
    """True when ``root`` holds train/ and test/ folders."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def find_pickle_dir(root: Path) -> Path | None:
    """``root`` itself or ``root/cifar-10-batches-py`` when it holds the python batches."""
    for candidate in (root, root / PICKLE_DIRNAME):
        if (candidate / PICKLE_TEST).is_file() and (candidate / PICKLE_TRAIN[0]).is_file():
            return candidate
    return None


def folder_classes(root: Path) -> tuple[str, ...]:
    """Class folder names of ``root/train``, sorted (the ImageFolder convention)."""
    return tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))


def _image_files(split_dir: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for index, label in enumerate(labels):
        class_dir = split_dir / label
        if not class_dir.is_dir():
            raise DatasetError(f"{split_dir}: class folder {label!r} is missing")
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DatasetError(f"{class_dir}: no images")
        files.extend((p, index) for p in found)
    return files


def _decode(files: list[tuple[Path, int]], color: str, size: int | None) -> dict[str, np.ndarray]:
    mode = "RGB" if color == "rgb" else "L"
    images: list[np.ndarray] = []
    for path, _ in files:
        try:
            with Image.open(path) as opened:
                img = opened.convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot decode image ({exc})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if images and arr.shape != images[0].shape:
            raise DatasetError(
                f"{path}: size {arr.shape[:2]} differs from {images[0].shape[:2]}; "
                "pass image_size to resize every image"
            )
        images.append(arr)
    return {
        "images": np.stack(images).astype(np.uint8),
        "labels": np.asarray([label for _, label in files], dtype=np.int64),
    }


def load_image_folder(
    root: Path,
    labels: tuple[str, ...],
    *,
    color: str,
    size: int | None,
    cache_dir: Path | None,
    stem: str,
) -> dict[str, np.ndarray]:
    """Decode (or load from the cache) train and test arrays of an ImageFolder tree."""
    train_files = _image_files(root / "train", labels)
    test_files = _image_files(root / "test", labels)
    key = content_key(
        root,
        [p for p, _ in train_files + test_files],
        extra=f"{labels}|{color}|{size}",
        cache_dir=cache_dir,
    )

    def build() -> dict[str, np.ndarray]:
        train = _decode(train_files, color, size)
        test = _decode(test_files, color, size)
        if train["images"].shape[1:] != test["images"].shape[1:]:
            raise DatasetError(f"{root}: train and test images differ in size")
        return {
            "train_images": train["images"],
            "train_labels": train["labels"],
            "test_images": test["images"],
            "test_labels": test["labels"],
        }

    return cached_arrays(cache_dir, stem, key, build)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")  # the official CIFAR-10 python format
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError) as exc:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_pickle_batches(batch_dir: Path) -> dict[str, np.ndarray]:
    """The official python batches (data_batch_1..5, test_batch) as uint8 NHWC arrays."""
    parts = [_read_batch(batch_dir / name) for name in PICKLE_TRAIN if (batch_dir / name).is_file()]
    test_images, test_labels = _read_batch(batch_dir / PICKLE_TEST)
    return {
        "train_images": np.concatenate([p[0] for p in parts]),
        "train_labels": np.concatenate([p[1] for p in parts]),
        "test_images": test_images,
        "test_labels": test_labels,
    }


def pickle_labels(batch_dir: Path) -> tuple[str, ...] | None:
    """Label names from batches.meta, when present."""
    meta = batch_dir / "batches.meta"
    if not meta.is_file():
        return None
    try:
        with meta.open("rb") as fh:
            names = pickle.load(fh, encoding="bytes")[b"label_names"]
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError):
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
