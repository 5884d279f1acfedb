"""Write the load-test images (digits PNGs, CIFAR-10 JPEGs) from the test splits into loadtest/data.

    python -m loadtest.make_data [--cifar10 /work/shared/datasets/cifar10] [--per-class 2]

Digits come from scikit-learn's bundled data set, test split of the project (20%, stratified,
random_state=0), pixels 0..16 mapped to 0..255 and saved as 8x8 greyscale PNG. CIFAR-10 images
are copied byte for byte from ``<cifar10>/test/<class>/NNNN.jpg``. File names start with the
true label: ``<label>_<index>.<ext>``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest.cli import positive_int, run_cli

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_CIFAR10 = Path("/work/shared/datasets/cifar10")


def write_digits(out: Path, per_class: int) -> list[Path]:
    """Save ``per_class`` test-split digits per class as 8x8 PNGs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    index = np.arange(len(images))
    _, test_idx = train_test_split(index, test_size=0.2, random_state=0, stratify=digits.target)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for label in range(10):
        chosen = [i for i in test_idx if digits.target[i] == label][:per_class]
        for i in chosen:
            path = out / f"{label}_{i:04d}.png"
            Image.fromarray(images[i], mode="L").save(path, optimize=True)
            written.append(path)
    return written


def copy_cifar10(root: Path, out: Path, per_class: int) -> list[Path]:
    """Copy the first ``per_class`` JPEGs of each CIFAR-10 test class."""
    test = root / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"{test}: CIFAR-10 test split not found")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for class_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for src in sorted(class_dir.glob("*.jpg"))[:per_class]:
            dst = out / f"{class_dir.name}_{src.stem}.jpg"
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar10", type=Path, default=DEFAULT_CIFAR10)
    parser.add_argument("--per-class", type=positive_int, default=2)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    if not (args.cifar10 / "test").is_dir():
        parser.error(f"--cifar10 {args.cifar10}: CIFAR-10 test split not found")
    digits = write_digits(args.out / "digits", args.per_class)
    cifar = copy_cifar10(args.cifar10, args.out / "cifar10", args.per_class)
    total = sum(p.stat().st_size for p in [*digits, *cifar])
    print(f"wrote {len(digits)} digits PNGs and {len(cifar)} CIFAR-10 JPEGs ({total} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
