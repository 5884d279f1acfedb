"""scikit-learn's bundled 8x8 digits as 8-bit grey images: the embedded default data set."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from export.data.splits import DatasetSplits, channel_stats, check_splits, make_input_spec

DIGITS_LABELS = tuple(str(i) for i in range(10))


def load_digits_splits() -> DatasetSplits:
    """The project's digits split: stratified 80/20, pixel values 0..16 mapped to 0..255."""
    digits = _sk_load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    mean, std = channel_stats(x_tr)
    return check_splits(
        DatasetSplits(
            name="digits",
            labels=DIGITS_LABELS,
            train_images=np.ascontiguousarray(x_tr),
            train_labels=y_tr.astype(np.int64),
            test_images=np.ascontiguousarray(x_te),
            test_labels=y_te.astype(np.int64),
            input_spec=make_input_spec(8, 8, 1, mean, std),
        )
    )
