"""Datasets: digits split, CIFAR-10 folders and pickles, the decoded cache, batch augmentation."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import export.data.folders as folders
from export.data import CIFAR10_LABELS, DatasetError, load_dataset
from export.data.augment import Normalizer, random_crop_flip
from service.contract.preprocess import normalize_uint8


def _write_tree(root: Path, classes: list[str], per_class: int, size: int = 8) -> None:
    """Real JPEGs; every image of class i is a flat colour (25 * i) so labels can be checked."""
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (25 * i, 25 * i, j)).save(folder / f"{j:04d}.jpg")


def test_digits_split_matches_the_contract() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_dataset("digits")
    digits = load_digits()
    _, x_te, _, y_te = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    assert data.train_images.shape == (1437, 8, 8, 1) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (360, 8, 8, 1) and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.test_images[..., 0], np.rint(x_te * 255 / 16))
    np.testing.assert_array_equal(data.test_labels, y_te)
    assert data.input_spec.color == "gray" and data.input_spec.shape == (1, 8, 8)
    assert data.labels == tuple(str(i) for i in range(10))


def test_torch_normalisation_equals_the_service_preprocessing() -> None:
    data = load_dataset("digits")
    want = normalize_uint8(data.test_images, data.input_spec)
    got = Normalizer(data.input_spec, torch.device("cpu"))(torch.from_numpy(data.test_images))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_cifar10_folder_uses_conventional_class_order_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cifar"
    _write_tree(root, list(reversed(CIFAR10_LABELS)), per_class=2, size=32)
    cache = tmp_path / "cache"
    data = load_dataset("cifar10", root, cache_dir=cache)
    assert data.labels == CIFAR10_LABELS
    assert data.train_images.shape == (20, 32, 32, 3) and data.test_images.shape == (20, 32, 32, 3)
    # Image colour encodes the index of the class folder in the reversed list.
    for image, label in zip(data.train_images, data.train_labels, strict=True):
        folder_index = list(reversed(CIFAR10_LABELS)).index(CIFAR10_LABELS[label])
        assert abs(int(image[0, 0, 0]) - 25 * folder_index) <= 3
    assert len(list(cache.glob("cifar10-*.npz"))) == 1
    assert data.input_spec.mean == (0.4914, 0.4822, 0.4465)

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folders, "_decode", no_decode)
    again = load_dataset("cifar10", root, cache_dir=cache)
    np.testing.assert_array_equal(again.train_images, data.train_images)
    # The key is the files' content: fresh mtimes or a copy of the tree elsewhere reuse it.
    for path in root.rglob("*.jpg"):
        os.utime(path, ns=(0, 10**18))
    copy = tmp_path / "copy of cifar"
    shutil.copytree(root, copy)
    for tree in (root, copy):
        np.testing.assert_array_equal(
            load_dataset("cifar10", tree, cache_dir=cache).train_images, data.train_images
        )
    monkeypatch.undo()
    # Changing the data changes the key, even at the same size: the cache is rebuilt, not reused.
    victim = root / "train" / "cat" / "0000.jpg"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
    changed = load_dataset("cifar10", root, cache_dir=cache)
    assert len(list(cache.glob("cifar10-*.npz"))) == 2
    assert not np.array_equal(changed.train_images, data.train_images)
    # One entry of the quantisation table one step off: the same size, other pixels.
    jpeg = bytearray(victim.read_bytes())
    size = len(jpeg)
    at = jpeg.index(b"\xff\xdb") + 5  # marker (2), length (2), precision/id: the DC entry
    jpeg[at] = jpeg[at] - 1 if jpeg[at] > 1 else jpeg[at] + 1
    victim.write_bytes(bytes(jpeg))
    assert victim.stat().st_size == size
    edited = load_dataset("cifar10", root, cache_dir=cache)
    assert len(list(cache.glob("cifar10-*.npz"))) == 3
    assert not np.array_equal(edited.train_images, changed.train_images)


def test_an_unchanged_tree_is_not_read_again_to_find_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "cifar", tmp_path / "cache"
    _write_tree(root, list(CIFAR10_LABELS), per_class=1, size=32)
    first = load_dataset("cifar10", root, cache_dir=cache)
    assert len(list((cache / "keys").iterdir())) == 1

    def no_read(self: Path) -> bytes:
        raise AssertionError(f"read {self} again: paths, sizes and mtimes are unchanged")

    monkeypatch.setattr(Path, "read_bytes", no_read)
    again = load_dataset("cifar10", root, cache_dir=cache)
    np.testing.assert_array_equal(again.test_images, first.test_images)
    # A remembered key that is not a key is ignored: the tree is hashed again and the key mended.
    monkeypatch.undo()
    (remembered,) = (cache / "keys").iterdir()
    remembered.write_text("garbage")
    third = load_dataset("cifar10", root, cache_dir=cache)
    np.testing.assert_array_equal(third.test_images, first.test_images)
    assert len(remembered.read_text().strip()) == 64
    assert len(list(cache.glob("cifar10-*.npz"))) == 1


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    batch_dir = tmp_path / "cifar-10-batches-py"
    batch_dir.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    flat = images.transpose(0, 3, 1, 2).reshape(6, -1)  # the official row layout: CHW
    for name, rows in (("data_batch_1", slice(0, 4)), ("test_batch", slice(4, 6))):
        with (batch_dir / name).open("wb") as fh:
            pickle.dump(
                {b"data": flat[rows], b"labels": [1, 2, 3, 9][: rows.stop - rows.start]}, fh
            )
    with (batch_dir / "batches.meta").open("wb") as fh:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_LABELS]}, fh)
    data = load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(data.train_images, images[:4])
    np.testing.assert_array_equal(data.test_images, images[4:])
    assert data.train_labels.tolist() == [1, 2, 3, 9]


def test_imagefolder_sorted_classes_and_own_stats(tmp_path: Path) -> None:
    _write_tree(tmp_path, ["zebra", "apple", "mango"], per_class=3, size=10)
    data = load_dataset("imagefolder", tmp_path, cache_dir=tmp_path / "c", image_size=8)
    assert data.labels == ("apple", "mango", "zebra")
    assert data.train_images.shape == (9, 8, 8, 3)
    assert data.input_spec.shape == (3, 8, 8) and len(data.input_spec.mean) == 3
    grey = load_dataset("imagefolder", tmp_path, cache_dir=tmp_path / "c", color="gray")
    assert grey.train_images.shape == (9, 10, 10, 1) and grey.input_spec.color == "gray"


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_missing_data_dir_says_where_the_data_must_be(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist.*train/<class>/\*\.jpg"):
        load_dataset(name, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="train/<class>"):
        load_dataset(name, tmp_path / "empty")


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist")


def test_random_crop_is_a_window_of_the_padded_image_and_reproducible() -> None:
    images = torch.randint(1, 256, (16, 8, 8, 3), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), flip=False)
    again = random_crop_flip(images, torch.Generator().manual_seed(1), flip=False)
    assert torch.equal(out, again) and out.shape == images.shape
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    for n in range(16):
        windows = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[n, dy : dy + 8, dx : dx + 8], out[n])
        ]
        assert windows, f"image {n} is not a crop of its padded original"
    moved = sum(not torch.equal(out[n], images[n]) for n in range(16))
    assert moved > 8  # offsets really vary (the centre crop has probability 1/81)


def test_flip_only_mirrors_about_half() -> None:
    images = torch.randint(0, 256, (200, 4, 4, 1), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    flipped = [torch.equal(out[n], images[n].flip(1)) for n in range(200)]
    kept = [torch.equal(out[n], images[n]) for n in range(200)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140
