"""Teacher logits computed once per epoch of a data stream, shared by every run distilled from them.

KD, SNN-MIMIC, FitNets' second stage and Rocket+KD only need the frozen teacher's logits on the
batches they train on. A batch depends only on the data, the seed, the batch size and the epoch
(``BatchSource.epoch``), so every run with the same teacher and the same stream sees the same
augmented images and needs the same logits. The first run to reach an epoch computes them (the
teacher in eval mode, under the run's precision, on exactly the training batches) and stores them
beside the teacher artifact; later runs read them instead of running the teacher again. Training
is unchanged (same images, same targets); a lane beside it waits on a file lock instead of
computing the same epoch twice. This is the soft-label store of "fast knowledge distillation"
(Shen & Xing, 2021), keyed by epoch instead of by crop.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.contract.model_card import sha256_file

SOFT_LABEL_DIR = "soft-labels"  # beside the teacher's trained.pt
FORMAT = "rocketserve-soft-labels-v1"


@dataclass(frozen=True)
class EpochLogits:
    """One epoch's teacher logits in batch order, and whether this call computed them."""

    logits: torch.Tensor  # [images in the epoch, classes] float32, on the training device
    computed: bool
    seconds: float


class SoftLabelStore:
    """Per-epoch teacher logits for one training stream, stored under
    ``<teacher dir>/soft-labels/<stream key>/epoch-NNNN.npy``."""

    def __init__(
        self,
        teacher: nn.Module,
        teacher_path: Path,
        stream: dict[str, Any],
        batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        autocast: Callable[[], AbstractContextManager[Any]],
        device: torch.device,
    ) -> None:
        """``stream`` names everything the batches depend on besides the epoch (seed, batch size,
        augmentation, the training images' digest, precision...); ``batches(epoch)`` yields the
        epoch's (x, y) exactly as training will."""
        self.teacher = teacher
        self.batches = batches
        self.autocast = autocast
        self.device = device
        identity = {"format": FORMAT, "teacher_sha256": sha256_file(teacher_path), **stream}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
        self.directory = teacher_path.parent / SOFT_LABEL_DIR / key
        self.identity = identity

    def path(self, epoch: int) -> Path:
        """Where epoch ``epoch``'s logits live."""
        return self.directory / f"epoch-{epoch:04d}.npy"

    def epoch(self, epoch: int) -> EpochLogits:
        """The teacher's logits on epoch ``epoch``'s batches: read, or computed and stored."""
        start = time.perf_counter()
        target = self.path(epoch)
        if not target.is_file():
            self.directory.mkdir(parents=True, exist_ok=True)
            identity_file = self.directory / "stream.json"
            if not identity_file.is_file():
                _write_atomic_text(identity_file, json.dumps(self.identity, indent=2) + "\n")
            with _locked(target.with_suffix(".lock")):
                if not target.is_file():  # another process may have written it meanwhile
                    _save_atomic(target, self._compute(epoch))
                    logits = torch.from_numpy(np.load(target)).to(self.device)
                    return EpochLogits(logits, True, time.perf_counter() - start)
        logits = torch.from_numpy(np.load(target)).to(self.device)
        return EpochLogits(logits, False, time.perf_counter() - start)

    @torch.no_grad()
    def _compute(self, epoch: int) -> np.ndarray:
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            parts = []
            for x, _ in self.batches(epoch):
                with self.autocast():
                    parts.append(self.teacher(x).float().cpu())
        finally:
            self.teacher.train(was_training)
        return torch.cat(parts).numpy()


def images_digest(images: torch.Tensor) -> str:
    """A digest of the training images (their bytes, shape and dtype)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str((tuple(images.shape), str(images.dtype))).encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save_atomic(target: Path, array: np.ndarray) -> None:
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array.astype(np.float32, copy=False))
    tmp.replace(target)


def _write_atomic_text(target: Path, text: str) -> None:
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
