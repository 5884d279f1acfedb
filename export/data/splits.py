"""The in-memory dataset every trainer consumes: uint8 images, int64 labels, an InputSpec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contract.model_card import InputSpec, ResizeSpec


class DatasetError(Exception):
    """A dataset is missing, malformed, or asked for with impossible options."""


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test splits as uint8 [N, H, W, C] images with int64 labels."""

    name: str
    labels: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    input_spec: InputSpec

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        """Channels of one image (1 grey, 3 RGB)."""
        return int(self.train_images.shape[-1])

    @property
    def image_size(self) -> int:
        """Height (= width) of one image."""
        return int(self.train_images.shape[1])


def make_input_spec(
    height: int, width: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> InputSpec:
    """The InputSpec of a dataset: 8-bit pixels scaled by 1/255, then (x - mean) / std."""
    return InputSpec(
        name="input",
        shape=(channels, height, width),
        color="rgb" if channels == 3 else "gray",
        resize=ResizeSpec(height=height, width=width, resample="bilinear"),
        scale=1.0 / 255.0,
        mean=mean,
        std=std,
    )


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, H, W, C] images after scaling by 1/255 (4 decimals)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in x.mean(axis=0))
    std = tuple(max(round(float(v), 4), 1e-4) for v in x.std(axis=0))
    return mean, std


def check_splits(splits: DatasetSplits) -> DatasetSplits:
    """Validate shapes and dtypes; raise DatasetError with the first problem found."""
    for part, images, labels in (
        ("train", splits.train_images, splits.train_labels),
        ("test", splits.test_images, splits.test_labels),
    ):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DatasetError(f"{splits.name} {part}: images must be uint8 [N, H, W, C]")
        if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise DatasetError(f"{splits.name} {part}: labels must be int64 [N]")
        if len(images) == 0:
            raise DatasetError(f"{splits.name} {part}: no images")
        if labels.min() < 0 or labels.max() >= len(splits.labels):
            raise DatasetError(f"{splits.name} {part}: label out of range")
    return splits
