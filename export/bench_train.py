"""Training-throughput benchmark: img/s of one SGD step per architecture on this machine."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F

from export.bench_profile import profile_step, render_profile
from export.complexity import count_macs
from export.data.augment import Normalizer, random_crop_flip
from export.data.splits import make_input_spec
from export.models import CIFAR_ARCHITECTURES, build_model, count_params
from export.onnx_export import export_onnx
from export.training.runtime import describe_device, select_device
from service.contract.model_card import InputSpec


@dataclass(frozen=True)
class BenchRow:
    """Throughput of one architecture."""

    arch: str
    precision: str
    params: int
    macs: int  # multiply-accumulates of one image, as the exported graph counts them
    batch_size: int
    steps: int
    seconds: float
    images_per_s: float
    ms_per_step: float
    profile_ms: dict[str, float] | None = None  # CPU ms per step by kind, with --profile
    compiled: bool = False  # the model ran through torch.compile
    warmup_s: float = 0.0  # the untimed first steps (with torch.compile: the compilation)


def graph_macs(model: torch.nn.Module, spec: InputSpec) -> int:
    """MACs of one image through ``model``, counted on its exported ONNX graph as every model
    card counts them (export/complexity.py); ``model`` itself is left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(copy.deepcopy(model), Path(tmp) / "model.onnx", spec)
        return count_macs(onnx.load(str(path)))


def bench_arch(
    arch: str,
    device: torch.device,
    *,
    batch_size: int = 64,
    min_seconds: float = 3.0,
    min_steps: int = 3,
    warmup: int = 2,
    channels_last: bool | None = None,
    precision: str = "fp32",
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    profile: bool = False,
    compiled: bool = False,
) -> BenchRow:
    """Time full training steps (augment + normalise + forward + backward + SGD) on CIFAR shapes
    (or the given ones); with ``profile``, then say where a step's CPU time goes; with
    ``compiled``, through ``torch.compile`` (its compilation falls in the untimed warm-up)."""
    torch.manual_seed(0)
    use_cl = device.type == "cpu" if channels_last is None else channels_last
    model = build_model(
        arch, in_channels=in_channels, num_classes=num_classes, image_size=image_size
    )
    spec = make_input_spec(image_size, image_size, in_channels, (0.5,) * in_channels,
                           (0.25,) * in_channels)  # fmt: skip
    macs = graph_macs(model, spec)
    model = model.to(device).train()
    if use_cl:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model
    normalize = Normalizer(spec, device)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch_size, image_size, image_size, in_channels)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step() -> None:
        x = normalize(random_crop_flip(images, gen))
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warm_start = time.perf_counter()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - warm_start
    steps = 0
    start = time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 10 == 0:
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    by_kind = profile_step(step) if profile else None
    return BenchRow(
        arch=arch,
        precision=precision,
        params=count_params(model),
        macs=macs,
        batch_size=batch_size,
        steps=steps,
        seconds=round(elapsed, 3),
        images_per_s=round(steps * batch_size / elapsed, 1),
        ms_per_step=round(elapsed / steps * 1000, 1),
        profile_ms=None if by_kind is None else {k: round(v, 2) for k, v in by_kind.items()},
        compiled=compiled,
        warmup_s=round(warmup_s, 1),
    )


def _against_eager(fast: BenchRow, eager: BenchRow) -> str:
    return (
        f"  {fast.arch} {fast.precision} through torch.compile: {fast.images_per_s:.1f} img/s, "
        f"{fast.images_per_s / eager.images_per_s:.2f}x eager (compiling and the first steps: "
        f"{fast.warmup_s:.1f} s)"
    )


def run_bench(
    archs: list[str] | None = None,
    *,
    device_name: str = "auto",
    batch_size: int = 64,
    min_seconds: float = 3.0,
    json_out: Path | None = None,
    echo: bool = True,
    threads: int | None = None,
    precisions: tuple[str, ...] = ("fp32",),
    profile: bool = False,
    compiled: bool = False,
) -> list[BenchRow]:
    """Benchmark ``archs`` (default: every CIFAR architecture) at each precision, print a table
    (with the bf16/fp32 ratio when both ran; with ``profile``, where each step's time goes; with
    ``compiled``, each also through ``torch.compile`` against eager), optionally JSON."""
    device = select_device(device_name)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(archs, device, batch_size, min_seconds, json_out, echo, precisions, profile,
                      compiled)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _bench(
    archs: list[str] | None,
    device: torch.device,
    batch_size: int,
    min_seconds: float,
    json_out: Path | None,
    echo: bool,
    precisions: tuple[str, ...],
    profile: bool = False,
    compiled: bool = False,
) -> list[BenchRow]:
    machine = describe_device(device)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    rows: list[BenchRow] = []
    if echo:
        print(f"training throughput, batch {batch_size}, 32x32x3, torch {torch.__version__}")
        print(f"machine: {machine}; load average before: {load}")
        print(
            f"{'arch':<18}{'precision':>10}{'params':>10}{'MACs':>8}{'img/s':>10}{'ms/step':>10}"
            f"{'steps':>7}{'vs fp32':>9}"
        )
    for arch in archs or list(CIFAR_ARCHITECTURES):
        fp32: float | None = None
        for precision in precisions:
            row = bench_arch(arch, device, batch_size=batch_size, min_seconds=min_seconds,
                             precision=precision, profile=profile)  # fmt: skip
            rows.append(row)
            if precision == "fp32":
                fp32 = row.images_per_s
            ratio = f"{row.images_per_s / fp32:.2f}x" if fp32 else "-"
            if echo:
                print(
                    f"{row.arch:<18}{row.precision:>10}{row.params:>10,}{row.macs / 1e6:>7.2f}M"
                    f"{row.images_per_s:>10.1f}"
                    f"{row.ms_per_step:>10.1f}{row.steps:>7}{ratio:>9}",
                    flush=True,
                )
                if row.profile_ms is not None:
                    line = render_profile(f"{arch} ({precision})", row.profile_ms, row.ms_per_step)
                    print(line, flush=True)
            if compiled:
                fast = bench_arch(arch, device, batch_size=batch_size, min_seconds=min_seconds,
                                  precision=precision, compiled=True)  # fmt: skip
                rows.append(fast)
                if echo:
                    print(_against_eager(fast, row), flush=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine,
            "load_average": load,
            "torch": torch.__version__,
            "rows": [asdict(r) for r in rows],
        }
        json_out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return rows
