"""Shared by the export tests: one really trained digits network, exported once per process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.checkpoint import TrainedMeta, load_trained
from export.data import DatasetSplits, load_dataset
from export.onnx_export import export_onnx
from export.training import run_training
from service.contract.preprocess import normalize_uint8

ARCH = "wrn-10-1"
EPOCHS = 6


@dataclass(frozen=True)
class TrainedDigits:
    """A trained network, its artifact file, its fp32 ONNX export and the data it was trained on."""

    model: torch.nn.Module
    meta: TrainedMeta
    artifact: Path
    onnx_path: Path
    splits: DatasetSplits
    torch_top1: float


def _scratch_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="export-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def trained_digits() -> TrainedDigits:
    """Train (once per test process, with run_training) a small WRN on digits; export it."""
    # One thread: the CI machine has two cores shared with other test processes, and torch's
    # OpenMP threads slow down many-fold when oversubscribed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build()
    finally:
        torch.set_num_threads(threads)


def _build() -> TrainedDigits:
    root = _scratch_dir()
    config = {
        "method": "baseline",
        "dataset": "digits",
        "student": ARCH,
        "epochs": EPOCHS,
        "seed": 0,
        "out_dir": str(root / "run"),
        "progress": False,
    }
    result = run_training(config)
    model, meta = load_trained(result.artifact_path)
    splits = load_dataset("digits")
    x_test = torch.from_numpy(normalize_uint8(splits.test_images, splits.input_spec))
    with torch.no_grad():
        top1 = float((model(x_test).argmax(1).numpy() == splits.test_labels).mean())
    onnx_path = export_onnx(model, root / "model.onnx", splits.input_spec)
    return TrainedDigits(model, meta, Path(result.artifact_path), onnx_path, splits, top1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of a logits matrix."""
    return float(np.mean(logits.argmax(axis=1) == labels))
