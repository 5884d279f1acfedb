"""Whether a zoo's lanes on one GPU can run side by side: CUDA MPS, and the note when it is off.

Without the Multi-Process Service a GPU time-slices between processes: one lane's kernels run
while the others wait, and small students' kernels leave most of the GPU idle. With MPS the lanes'
kernels share the GPU at once: on an NVIDIA H200 the CIFAR-10 zoo's lanes together trained about
twice the images per second with it (docs/offline.md has the runs' figures).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

# nvidia-cuda-mps-control's default pipe directory; CUDA_MPS_PIPE_DIRECTORY moves it.
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"


def mps_control_pipe(env: Mapping[str, str] | None = None) -> Path:
    """Where a running MPS control daemon keeps its control pipe."""
    env = os.environ if env is None else env
    return Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR) / "control"


def mps_running(env: Mapping[str, str] | None = None) -> bool:
    """True when an MPS control daemon's pipe exists (CUDA clients then go through it)."""
    try:
        return stat.S_ISFIFO(mps_control_pipe(env).stat().st_mode)
    except OSError:
        return False


def gpu_sharing_note(lanes: int, gpus: int, mps: bool) -> str | None:
    """The advice to log when more lanes than GPUs would time-slice them; None when not."""
    if gpus < 1 or lanes <= gpus or mps:
        return None
    per_gpu = -(-lanes // gpus)
    return (
        f"note: up to {per_gpu} lanes share each of {gpus} GPU(s) without CUDA MPS, so their "
        "kernels take turns and small students leave the GPU mostly idle; start the daemon "
        "first (`nvidia-cuda-mps-control -d`) to run them side by side"
    )
