"""Where training runs: device choice, torchrun/DDP process groups, seeding, machine description."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from service.contract.machine import cpu_model_name


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (nccl on GPU, gloo on CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def finish_distributed() -> None:
    """Leave the process group (a no-op outside torchrun)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_checksums(module: torch.nn.Module) -> list[float]:
    """Sum of every parameter on every rank (rank order); equal values mean replicas agree."""
    local = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
    if not dist.is_initialized():
        return [float(local)]
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return [float(v) for v in gathered]


def select_device(requested: str) -> torch.device:
    """'auto' is cuda when available (the local rank's GPU under torchrun), else cpu."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
        return torch.device("cuda", local % torch.cuda.device_count())
    if requested != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bf16 in hardware (a CUDA GPU with bf16, or a CPU whose oneDNN
    has AVX512-BF16/AMX kernels). Elsewhere bf16 autocast is emulated: on an AVX2-only AMD EPYC it
    trained WRN-16-1 and WRN-40-2 ~10x slower than fp32 (docs/offline.md)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """The training precision to use: 'auto' is bf16 where the device has it natively, else fp32;
    an explicit choice is kept (with a warning when bf16 would be emulated)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested == "bf16" and not native_bf16(device):
        print(
            f"warning: bf16 training on {describe_device(device)} is emulated (no native bf16) and "
            "much slower than fp32; precision auto picks fp32 here",
            file=sys.stderr,
            flush=True,
        )
    return requested


def describe_device(device: torch.device, world_size: int = 1) -> str:
    """e.g. 'cpu (Intel(R) Xeon(R) Processor, 2 cores, 1 thread)' or 'cuda (NVIDIA H200) x2'."""
    if device.type == "cuda":
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        threads = torch.get_num_threads()
        text = (
            f"cpu ({cpu_model_name()}, {os.cpu_count()} cores, "
            f"{threads} thread{'' if threads == 1 else 's'})"
        )
    return text if world_size == 1 else f"{text} x{world_size} processes"
