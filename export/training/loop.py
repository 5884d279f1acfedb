"""The epoch loop: batches on the device, optimizer and LR schedule, evaluation, resumable state."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from export.checkpoint import read_torch_file
from export.data import DatasetSplits
from export.data.augment import Normalizer, random_crop_flip
from export.distill import DistillMethod
from export.training import pause
from export.training.config import fingerprint_changes
from export.training.logs import Progress, RunLog
from export.training.runtime import DistInfo
from export.training.soft_labels import SoftLabelStore

CHECKPOINT_FILENAME = "checkpoint.pt"


class ResumeError(Exception):
    """A checkpoint cannot be resumed with the given config."""


def build_optimizer(params: list[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW, with weight decay."""
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(
        params,
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        nesterov=bool(cfg["nesterov"]) and cfg["momentum"] > 0,
        weight_decay=cfg["weight_decay"],
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: one-cycle, cosine or constant."""
    if cfg["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg["lr"],
            total_steps=max(total_steps, 2),
            pct_start=cfg["warmup_fraction"],
            div_factor=10.0,
            final_div_factor=100.0,
            cycle_momentum=cfg["optimizer"] == "sgd" and cfg["momentum"] > 0,
            base_momentum=0.85 * cfg["momentum"] if cfg["optimizer"] == "sgd" else 0.85,
            max_momentum=cfg["momentum"] if cfg["optimizer"] == "sgd" else 0.95,
        )
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class BatchSource:
    """Train images as a uint8 tensor on the device; batches are augmented and normalised there."""

    def __init__(
        self,
        data: DatasetSplits,
        train_index: np.ndarray,
        device: torch.device,
        *,
        batch_size: int,
        augment: bool,
        channels_last: bool,
        seed: int,
        dist_info: DistInfo,
    ) -> None:
        self.images = torch.from_numpy(data.train_images[train_index]).to(device)
        self.labels = torch.from_numpy(data.train_labels[train_index]).to(device)
        self.test_images = torch.from_numpy(data.test_images).to(device)
        self.test_labels = torch.from_numpy(data.test_labels).to(device)
        self.normalize = Normalizer(data.input_spec, device)
        self.device = device
        self.augment = augment
        self.channels_last = channels_last
        self.seed = seed
        self.dist = dist_info
        self.local_batch = max(2, batch_size // dist_info.world_size)
        per_rank = len(self.images) // dist_info.world_size
        if per_rank < 2:
            raise ValueError(f"only {len(self.images)} training images for {dist_info.world_size} "
                             "process(es)")  # fmt: skip
        self.per_rank = per_rank
        # A trailing batch of one image would break batch norm: merge it into the previous one.
        self.steps_per_epoch = max(1, per_rank // self.local_batch)
        if per_rank % self.local_batch >= 2 or per_rank < self.local_batch:
            self.steps_per_epoch = math.ceil(per_rank / self.local_batch)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (channels_last when asked)."""
        x = self.normalize(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch(
        self, epoch: int, max_steps: int | None = None, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) for one epoch from ``start_step`` on; the order and the augmentation
        depend only on (seed, epoch), so a run resumed at an epoch boundary or at a saved step
        sees exactly what an uninterrupted run would have seen."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.images), generator=gen)
        mine = order[self.dist.rank :: self.dist.world_size][: self.per_rank].to(self.device)
        aug_gen = torch.Generator(device=self.device).manual_seed(
            self.seed * 100_003 + epoch + 7919 * (self.dist.rank + 1)
        )
        steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        for step in range(steps):
            end = (
                (step + 1) * self.local_batch if step < self.steps_per_epoch - 1 else self.per_rank
            )
            idx = mine[step * self.local_batch : end]
            images = self.images[idx]
            if self.augment:
                images = random_crop_flip(images, aug_gen)  # draws even for skipped steps
            if step >= start_step:
                yield self.prepare(images), self.labels[idx]


@torch.no_grad()
def evaluate(net: nn.Module, source: BatchSource, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``net`` on the test split (eval mode; restores the previous mode)."""
    was_training = net.training
    net.eval()
    correct = 0
    for start in range(0, len(source.test_images), batch_size):
        x = source.prepare(source.test_images[start : start + batch_size])
        pred = net(x).argmax(dim=1)
        correct += int((pred == source.test_labels[start : start + batch_size]).sum())
    net.train(was_training)
    return correct / len(source.test_images)


@dataclass
class LoopState:
    """Progress that a checkpoint carries besides weights."""

    epoch: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0  # steps of ``epoch`` already done (a checkpoint saved inside an epoch)
    partial: dict[str, Any] = field(default_factory=dict)  # that epoch's running sums so far


class Trainer:
    """Runs epochs of a DistillMethod, logs them and saves a resumable checkpoint after each."""

    def __init__(
        self,
        method: DistillMethod,
        source: BatchSource,
        cfg: dict[str, Any],
        out_dir: Path,
        dist_info: DistInfo,
        log: RunLog,
        soft_labels: SoftLabelStore | None = None,
    ) -> None:
        self.method = method
        self.soft_labels = soft_labels
        self.source = source
        self.cfg = cfg
        self.out_dir = out_dir
        self.dist = dist_info
        self.log = log
        params = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg)
        spe = source.steps_per_epoch
        self.total_steps = max(1, round(cfg["epochs"] * spe))
        self.num_epochs = math.ceil(self.total_steps / spe)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.model: nn.Module = method
        if dist_info.enabled:
            self.model = DistributedDataParallel(
                method, find_unused_parameters=method.find_unused_parameters
            )
        self.state = LoopState()
        self.epochs_run = 0  # by this process's run(), unlike state.epoch

    @property
    def checkpoint_path(self) -> Path:
        """Where the resumable checkpoint lives."""
        return self.out_dir / CHECKPOINT_FILENAME

    def save_checkpoint(self, fingerprint: dict[str, Any]) -> None:
        """Model, optimizer, scheduler, epoch and history (rank 0 only; atomic)."""
        if not self.dist.is_main:
            return
        blob = {
            "fingerprint": fingerprint,
            "epoch": self.state.epoch,
            "elapsed_s": self.state.elapsed_s,
            "history": self.state.history,
            "step": self.state.step,
            "partial": self.state.partial,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        tmp = self.checkpoint_path.with_name(f"{CHECKPOINT_FILENAME}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        tmp.replace(self.checkpoint_path)

    def load_checkpoint(self, fingerprint: dict[str, Any]) -> bool:
        """Restore from the checkpoint if there is one; False when starting fresh."""
        if not self.checkpoint_path.is_file():
            return False
        blob = read_torch_file(self.checkpoint_path, self.source.device)
        changed = fingerprint_changes(fingerprint, blob["fingerprint"])
        if changed:
            raise ResumeError(
                f"{self.checkpoint_path} was written with a different config "
                f"({', '.join(changed)}); use another out_dir or the same options"
            )
        self.method.load_state_dict(blob["method"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.state = LoopState(
            blob["epoch"],
            blob["elapsed_s"],
            list(blob["history"]),
            int(blob.get("step", 0)),  # checkpoints written at epoch ends only have none
            dict(blob.get("partial") or {}),
        )
        return True

    def run(self, fingerprint: dict[str, Any]) -> bool:
        """Train until the budget is spent (True) or ``stop_after`` epochs were run (False).

        SIGTSTP pauses the process until SIGCONT, and the pause is not training time
        (export/training/pause.py)."""
        pause.clock.install()
        stop_after = self.cfg["stop_after"]
        spe = self.source.steps_per_epoch
        while self.state.epoch < self.num_epochs:
            if stop_after is not None and self.epochs_run >= stop_after:
                return False
            epoch = self.state.epoch
            steps_left = self.total_steps - epoch * spe
            record = self._one_epoch(epoch, min(spe, steps_left), fingerprint)
            self.state.epoch += 1
            self.state.step, self.state.partial = 0, {}
            self.state.history.append(record)
            self.log.write("epoch", **record)
            if self.cfg["progress"] and self.dist.is_main:
                print(
                    f"epoch {record['epoch']}/{self.num_epochs}: loss {record['loss']:.4f}, "
                    f"train acc {record['train_acc']:.2%}, test top-1 {record['test_top1']:.2%}, "
                    f"{record['img_per_s']:.0f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
            self.save_checkpoint(fingerprint)
            self.epochs_run += 1
        return True

    def _one_epoch(self, epoch: int, steps: int, fingerprint: dict[str, Any]) -> dict[str, Any]:
        self.model.train()
        start = last_save = pause.clock()
        # A checkpoint saved inside this epoch: carry on from its step with its running sums.
        first = self.state.step
        partial = self.state.partial
        device = self.source.device
        seen, correct = int(partial.get("seen", 0)), int(partial.get("correct", 0))
        loss_sum = torch.tensor(float(partial.get("loss_sum", 0.0)), device=device)
        earlier_s = float(partial.get("train_time_s", 0.0))
        terms_sum: dict[str, torch.Tensor] = {
            k: torch.tensor(float(v), device=device) for k, v in partial.get("terms", {}).items()
        }
        minutes = self.cfg.get("checkpoint_minutes")
        autocast = torch.autocast(
            self.source.device.type,
            dtype=torch.bfloat16,
            enabled=self.cfg["precision"] == "bf16",
        )
        given = None
        if self.soft_labels is not None:
            given = self.soft_labels.epoch(epoch)
            self.log.write(
                "soft labels",
                epoch=epoch + 1,
                computed=given.computed,
                seconds=round(given.seconds, 3),
                store=str(self.soft_labels.directory),
            )
            if self.cfg["progress"] and self.dist.is_main:  # minutes of a KD epoch, not silent
                how = "computed" if given.computed else "read from the store"
                print(
                    f"epoch {epoch + 1}/{self.num_epochs}: the teacher's logits of "
                    f"{len(given.logits):,} images {how} in {given.seconds:.1f} s "
                    f"({len(given.logits) / max(given.seconds, 1e-9):,.0f} img/s)",
                    file=sys.stderr,
                    flush=True,
                )
        # Started after the teacher's logits are in, so its img/s and time left are training's.
        bar = Progress(
            steps - first,
            f"epoch {epoch + 1}/{self.num_epochs}",
            self.cfg["progress"] and self.dist.is_main,
        )
        offset = first * self.source.local_batch  # every batch before the last is full
        for step, (x, y) in enumerate(self.source.epoch(epoch, steps, first), start=first):
            if given is not None:
                self.method.give_teacher_logits(given.logits[offset : offset + len(y)])
                offset += len(y)
            with autocast:
                loss, logits = self.model(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            n = len(y)
            seen += n
            loss_sum += loss.detach() * n
            correct_now = int((logits.detach().argmax(1) == y).sum())
            correct += correct_now
            for k, v in self.method.last_terms.items():
                terms_sum[k] = terms_sum.get(k, torch.zeros((), device=v.device)) + v * n
            bar.update(float(loss.detach()), correct / seen, n)
            now = pause.clock()
            if minutes is not None and step + 1 < steps and now - last_save >= minutes * 60:
                self.state.step = step + 1
                self.state.partial = {
                    "seen": seen,
                    "correct": correct,
                    "loss_sum": float(loss_sum),
                    "terms": {k: float(v) for k, v in terms_sum.items()},
                    "train_time_s": earlier_s + now - start,
                }
                self.save_checkpoint(fingerprint)
                last_save = pause.clock()
        bar.close()
        train_time = earlier_s + pause.clock() - start
        self.state.elapsed_s += train_time
        test_top1 = evaluate(self.method.student(), self.source)
        return {
            "epoch": epoch + 1,
            "steps": steps,
            "loss": round(float(loss_sum) / max(seen, 1), 6),
            "train_acc": round(correct / max(seen, 1), 6),
            "test_top1": round(test_top1, 6),
            "lr": self.scheduler.get_last_lr()[0],
            "img_per_s": round(seen * self.dist.world_size / max(train_time, 1e-9), 1),
            "epoch_time_s": round(train_time, 3),
            **{k: round(float(v) / max(seen, 1), 6) for k, v in terms_sum.items()},
        }
