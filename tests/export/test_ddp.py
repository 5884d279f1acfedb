"""DistributedDataParallel through torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from export.checkpoint import load_trained
from export.training.logs import read_log

ROOT = Path(__file__).resolve().parents[2]


def test_two_process_gloo_run_trains_one_model(tmp_path: Path) -> None:
    # rocket-kd with a teacher given as an architecture: the teacher is trained first, by both
    # processes, inside the same process group, then the rocket pair learns from it.
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "export", "train", "--method", "rocket-kd", "--student", "wrn-10-1",
        "--booster", "wrn-16-1", "--teacher", "wrn-10-1", "--teacher-epochs", "1",
        "--epochs", "3", "--batch-size", "64", "--device", "cpu",
        "--threads", "1", "--no-progress", "--out", str(out), "--json",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])  # only rank 0 prints
    assert proc.stdout.count('"artifact_path"') == 1
    assert result["completed"] and result["test_top1"] >= 0.85
    start = read_log(out)[0]
    assert start["world_size"] == 2 and "x2 processes" in start["device"]
    # Each rank sees half the data: 1437 images -> 718 per rank, 32 per rank-batch.
    assert start["steps_per_epoch"] == 23 and start["train_images"] == 1437
    end = read_log(out)[-1]
    sums = end["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # the replicas stayed identical
    model, meta = load_trained(result["artifact_path"])
    assert meta.device.endswith("x2 processes")
    teacher_end = read_log(out / "teacher")[-1]
    assert teacher_end["event"] == "end" and len(set(teacher_end["rank_checksums"])) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
