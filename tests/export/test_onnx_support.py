"""Shared by the export tests: one really trained digits network, exported once per process.

Named ``test_*`` so it sits with the tests it serves; it holds helpers and no tests.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.checkpoint import TrainedMeta, save_trained
from export.data import DatasetSplits, load_dataset
from export.models import build_model
from export.onnx_export import export_onnx
from service.preprocess import normalize_uint8

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


def _train(model: torch.nn.Module, splits: DatasetSplits, epochs: int) -> None:
    """Plain cross-entropy with Adam: a few seconds on two cores, ~98% on digits."""
    torch.manual_seed(0)
    x = torch.from_numpy(normalize_uint8(splits.train_images, splits.input_spec))
    y = torch.from_numpy(splits.train_labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@functools.cache
def trained_digits() -> TrainedDigits:
    """Train (once per test process) a small Wide ResNet on digits and export it to ONNX."""
    # One thread: the CI machine has two cores shared with other test processes, and torch's
    # OpenMP threads slow down many-fold when oversubscribed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build()
    finally:
        torch.set_num_threads(threads)


def _build() -> TrainedDigits:
    torch.manual_seed(0)
    splits = load_dataset("digits")
    spec = splits.input_spec
    kwargs = {"in_channels": 1, "num_classes": len(splits.labels), "image_size": 8}
    model = build_model(ARCH, **kwargs)
    _train(model, splits, EPOCHS)
    x_test = torch.from_numpy(normalize_uint8(splits.test_images, spec))
    with torch.no_grad():
        top1 = float((model(x_test).argmax(1).numpy() == splits.test_labels).mean())
    root = _scratch_dir()
    meta = TrainedMeta(
        arch=ARCH,
        model_kwargs=kwargs,
        dataset="digits",
        labels=list(splits.labels),
        input_spec=spec.model_dump(mode="json"),
        method="baseline",
        epochs=EPOCHS,
        seed=0,
        config={"method": "baseline", "student": ARCH, "epochs": EPOCHS, "lr": 3e-3},
        wall_time_s=1.0,
        device="cpu",
        recipe="test fixture: Adam, cross-entropy",
        test_top1=top1,
    )
    artifact = save_trained(root / "student.pt", model, meta)
    onnx_path = export_onnx(model, root / "model.onnx", spec)
    return TrainedDigits(model, meta, artifact, onnx_path, splits, top1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 of a logits matrix."""
    return float(np.mean(logits.argmax(axis=1) == labels))
