"""Measure an ONNX artifact with ONNX Runtime: accuracy on a full test split and latency profile."""

from __future__ import annotations

import base64
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract.machine import cpu_model_name
from service.contract.model_card import EvalMetrics, InputSpec, LatencyProfile, ProfileRow
from service.contract.preprocess import normalize_uint8

BATCH_SIZES = (1, 8, 32, 128)


def default_threads() -> int:
    """Intra-op threads used for offline figures: every core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pick_provider(preferred: str = "auto") -> str:
    """CUDA when ONNX Runtime has it and ``preferred`` allows it, otherwise CPU."""
    available = ort.get_available_providers()
    if preferred == "auto":
        return (
            "CUDAExecutionProvider"
            if "CUDAExecutionProvider" in available
            else ("CPUExecutionProvider")
        )
    if preferred not in available:
        raise ValueError(f"provider {preferred!r} is not available (have {', '.join(available)})")
    return preferred


def make_session(path: Path, provider: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session on one provider with a fixed intra-op thread count."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    chosen = pick_provider(provider)
    providers = [chosen] if chosen == "CPUExecutionProvider" else [chosen, "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


# CPU features that decide int8 and fp32 kernel speed (int8 gains need VNNI or AMX).
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine_description() -> str:
    """CPU model, vector ISA, core count and OS (from lscpu when present), plus any GPU."""
    model = cpu_model_name()
    flags: set[str] = set()
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        for line in out.splitlines():
            if line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
    except (OSError, subprocess.SubprocessError):
        pass
    isa = [f for f in _ISA_FLAGS if f in flags]
    if isa:
        model += f" ({' '.join(isa)})"
    text = f"{model}, {default_threads()} cores, {platform.system()} {platform.machine()}"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        text += ", CUDA available"
    return text


def logits_of(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Run a float tensor [N,C,H,W] through the session in chunks."""
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks, axis=0).astype(np.float32)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


ECE_BINS = 15  # equal-width confidence bins, as in Guo et al., "On Calibration of Modern Neural
# Networks", ICML 2017


def pack_hits(hits: np.ndarray) -> str:
    """Per-image top-1 hits (bool, split order) as a card's ``metrics.correct``."""
    return base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode("ascii")


def unpack_hits(correct: str, n: int) -> np.ndarray:
    """A card's ``metrics.correct`` back as ``n`` booleans."""
    packed = np.frombuffer(base64.b64decode(correct), dtype=np.uint8)
    return np.unpackbits(packed, count=n).astype(bool)


def calibration(
    logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[float, float]:
    """(expected calibration error, mean negative log-likelihood) of the softmax of ``logits``.

    ECE: the images binned by the top class's softmax probability (``bins`` equal-width bins),
    the gap between each bin's accuracy and its mean confidence, weighted by the bin's share;
    0 when the scores the service answers with mean what they say."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    nll = float(-np.mean(log_probs[np.arange(len(labels)), labels]))
    confidence = np.exp(log_probs.max(axis=1))
    correct = log_probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
            ece += gap * float(members.mean())
    return ece, nll


def evaluate_accuracy(
    session: ort.InferenceSession,
    spec: InputSpec,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    dataset: str,
    split: str = "test",
    teacher_top1: np.ndarray | None = None,
) -> EvalMetrics:
    """Top-1 (and top-5 with more than 5 classes), calibration (ECE, NLL) on uint8 images
    [N,H,W,C], preprocessed per spec; given the teacher's top-1 class on each image, the share of
    images where both agree.

    The input goes through ``service.contract.preprocess.normalize_uint8`` only: what the
    service runs.
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images, got {len(images)} and {len(labels)}")
    if teacher_top1 is not None and teacher_top1.shape != labels.shape:
        n = len(labels)
        raise ValueError(f"need one teacher answer per image ({n}), got shape {teacher_top1.shape}")
    logits = logits_of(session, normalize_uint8(images, spec))
    n_classes = logits.shape[1]
    hits = np.argsort(-logits, axis=1, kind="stable")[:, 0] == labels  # as top-1 counts them
    agreement = None
    if teacher_top1 is not None:
        agreement = float(np.mean(logits.argmax(axis=1) == teacher_top1))
    # A broken network's NaN or infinite logits have no calibration to state (top-1 still has).
    ece, nll = calibration(logits, labels) if np.isfinite(logits).all() else (None, None)
    return EvalMetrics(
        dataset=dataset,
        split=split,
        n=len(labels),
        top1=float(hits.mean()),
        top5=topk_accuracy(logits, labels, 5) if n_classes > 5 else None,
        measured_with=f"onnxruntime {ort.__version__}",
        teacher_agreement=agreement,
        ece=ece,
        nll=nll,
        correct=pack_hits(hits),
    )


def _time_runs(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], min_runs: int, min_seconds: float
) -> np.ndarray:
    """Latencies in ms of repeated runs: at least ``min_runs`` and ``min_seconds``, at most 10x."""
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs * 10 and (
        len(times) < min_runs or time.perf_counter() - start < min_seconds
    ):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return np.asarray(times)


def profile_latency(
    session: ort.InferenceSession,
    spec: InputSpec,
    images: np.ndarray,
    *,
    threads: int,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    min_runs: int = 50,
    min_seconds: float = 0.3,
    machine: str | None = None,
) -> LatencyProfile:
    """p50/p99 latency and images per second per batch size, on real uint8 images [N,H,W,C]."""
    x = normalize_uint8(images[: max(batch_sizes)], spec)  # the largest batch is all it needs
    name = session.get_inputs()[0].name
    rows = []
    for bs in batch_sizes:
        idx = np.arange(bs) % len(x)
        times = _time_runs(session, {name: np.ascontiguousarray(x[idx])}, min_runs, min_seconds)
        p50, p99 = (float(v) for v in np.percentile(times, [50, 99]))
        rows.append(
            ProfileRow(batch_size=bs, p50_ms=p50, p99_ms=p99, images_per_s=bs * 1000.0 / p50)
        )
    return LatencyProfile(
        provider=session.get_providers()[0],
        threads=threads,
        machine=machine or machine_description(),
        rows=tuple(rows),
    )
