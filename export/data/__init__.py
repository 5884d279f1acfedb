"""Datasets for training: digits (embedded default), CIFAR-10 and a user's own ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path

from export.data.digits import DIGITS_LABELS, load_digits_splits
from export.data.folders import (
    find_pickle_dir,
    folder_classes,
    is_image_folder,
    load_image_folder,
    load_pickle_batches,
    pickle_labels,
)
from export.data.splits import (
    DatasetError,
    DatasetSplits,
    channel_stats,
    check_splits,
    make_input_spec,
)

__all__ = [
    "CIFAR10_LABELS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DIGITS_LABELS",
    "DatasetError",
    "DatasetSplits",
    "default_data_dir",
    "load_dataset",
]

DATASETS = ("digits", "cifar10", "imagefolder")
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_ENV = "ROCKETSERVE_CIFAR10"
CIFAR10_DEFAULT = Path("../shared/datasets/cifar10")


def default_data_dir(name: str) -> Path | None:
    """Where a data set is looked for when no data_dir is given."""
    if name == "cifar10":
        return Path(os.environ.get(CIFAR10_ENV) or CIFAR10_DEFAULT)
    return None


def _where(name: str) -> str:
    if name == "cifar10":
        return (
            "CIFAR-10 must be an ImageFolder tree (<dir>/train/<class>/*.jpg, <dir>/test/<class>/"
            f"*.jpg) or the python batches (<dir>/{'cifar-10-batches-py'}/data_batch_1..5, "
            f"test_batch); pass --data-dir or set ${CIFAR10_ENV} (default {CIFAR10_DEFAULT})"
        )
    return "an ImageFolder tree must hold <dir>/train/<class>/*.jpg and <dir>/test/<class>/*.jpg"


def _load_cifar10(root: Path, cache_dir: Path | None) -> DatasetSplits:
    batch_dir = find_pickle_dir(root)
    if is_image_folder(root):
        found = set(folder_classes(root))
        if found != set(CIFAR10_LABELS):
            raise DatasetError(
                f"{root}/train: class folders {sorted(found)} are not the ten CIFAR-10 classes"
            )
        arrays = load_image_folder(
            root, CIFAR10_LABELS, color="rgb", size=32, cache_dir=cache_dir, stem="cifar10"
        )
    elif batch_dir is not None:
        names = pickle_labels(batch_dir)
        if names is not None and names != CIFAR10_LABELS:
            raise DatasetError(f"{batch_dir}/batches.meta: unexpected label names {names}")
        arrays = load_pickle_batches(batch_dir)
    else:
        raise DatasetError(f"no CIFAR-10 data at {root}: {_where('cifar10')}")
    return DatasetSplits(
        name="cifar10",
        labels=CIFAR10_LABELS,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        input_spec=make_input_spec(32, 32, 3, CIFAR10_MEAN, CIFAR10_STD),
    )


def _load_imagefolder(
    root: Path, cache_dir: Path | None, image_size: int | None, color: str
) -> DatasetSplits:
    if not is_image_folder(root):
        raise DatasetError(f"no image folder at {root}: {_where('imagefolder')}")
    labels = folder_classes(root)
    if len(labels) < 2:
        raise DatasetError(f"{root}/train: need at least two class folders, found {len(labels)}")
    arrays = load_image_folder(
        root, labels, color=color, size=image_size, cache_dir=cache_dir, stem="imagefolder"
    )
    train = arrays["train_images"]
    mean, std = channel_stats(train)
    return DatasetSplits(
        name="imagefolder",
        labels=labels,
        train_images=train,
        train_labels=arrays["train_labels"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        input_spec=make_input_spec(train.shape[1], train.shape[2], train.shape[3], mean, std),
    )


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    color: str = "rgb",
) -> DatasetSplits:
    """Load a data set by name; ``image_size``/``color`` apply to imagefolder only."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if name == "digits":
        return load_digits_splits()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    if root is None:
        raise DatasetError(f"dataset {name!r} needs a data directory: {_where(name)}")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"data directory {root} is a file, not a folder: {_where(name)}")
    if not root.is_dir():
        raise DatasetError(f"data directory {root} does not exist: {_where(name)}")
    if name == "cifar10":
        splits = _load_cifar10(root, cache)
    else:
        if color not in ("rgb", "gray"):
            raise DatasetError(f"color must be 'rgb' or 'gray', not {color!r}")
        splits = _load_imagefolder(root, cache, image_size, color)
    return check_splits(splits)
