"""Where one training step's CPU time goes, by kind of work (depthwise convolutions apart)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

DEPTHWISE_BACKWARD = "convolution backward, depthwise"
KINDS = (
    DEPTHWISE_BACKWARD,
    "convolution backward, other",
    "convolution forward, depthwise",
    "convolution forward, other",
    "batch norm backward",
    "batch norm forward",
    "activation (ReLU, ReLU6) forward and backward",
    "copies and casts (bf16 autocast, layouts)",
    "optimizer step",
    "the rest",
)


def _depthwise(inputs: Sequence[int], weight: Sequence[int]) -> bool:
    """One filter per input channel: the weight's second dimension (input channels per group) is
    1 while the input has several channels (a 1-channel image through a filter bank is dense)."""
    return len(inputs) == 4 and len(weight) == 4 and inputs[1] > 1 and weight[1] == 1


def kind_of(name: str, shapes: Sequence[Sequence[int]]) -> str:
    """The kind of work one profiler event (an ATen op's name and its inputs' shapes) does."""
    if "conv" in name and "backward" in name:  # (grad_output, input, weight, ...)
        depthwise = len(shapes) > 2 and _depthwise(shapes[1], shapes[2])
        return DEPTHWISE_BACKWARD if depthwise else "convolution backward, other"
    if "conv" in name:  # (input, weight, ...)
        depthwise = len(shapes) > 1 and _depthwise(shapes[0], shapes[1])
        return "convolution forward, " + ("depthwise" if depthwise else "other")
    if "batch_norm" in name:
        return "batch norm " + ("backward" if "backward" in name else "forward")
    if any(a in name for a in ("relu", "hardtanh", "threshold", "clamp")):
        return "activation (ReLU, ReLU6) forward and backward"
    if any(c in name for c in ("copy_", "_to_copy", "contiguous", "clone")):
        return "copies and casts (bf16 autocast, layouts)"
    if "Optimizer" in name or "sgd" in name.lower():
        return "optimizer step"
    return "the rest"


def profile_step(step: Callable[[], None], steps: int = 3) -> dict[str, float]:
    """Milliseconds of CPU per ``step`` by kind (``KINDS``), from the self time of every op that
    PyTorch's profiler records over ``steps`` steps: a time counts once, in the op that spent it."""
    cpu = torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[cpu], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.events():
        shapes = [s if isinstance(s, list) else [] for s in (event.input_shapes or [])]
        by_kind[kind_of(event.name, shapes)] += event.self_cpu_time_total / 1e3 / steps
    return {k: by_kind.get(k, 0.0) for k in KINDS}


def render_profile(arch: str, by_kind: dict[str, float], timed_ms: float) -> str:
    """A few lines: each kind's share of the step, the largest first. Profiling slows a step
    (per op: a MobileNet runs ~1,000 small ops a step and slows ~2x, a WRN-16-1 hardly at all),
    so the shares are the figures to read, and the header says by how much it slowed."""
    total = sum(by_kind.values()) or 1.0
    lines = [
        f"  where a step of {arch} goes (PyTorch profiler, self CPU time; the profiled step took "
        f"{total:.0f} ms against {timed_ms:.0f} ms timed):"
    ]
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if ms > 0:
            lines.append(f"    {kind:<48}{ms / total:>7.1%}")
    return "\n".join(lines)
