"""The ceiling: ONNX Runtime called directly, in process, on the same model files and batches."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from loadtest.payloads import SampleImage
from service.contract.model_card import ModelCard, model_file, read_manifest, version_dirs
from service.contract.preprocess import preprocess_image


@dataclass(frozen=True)
class RawResult:
    """Throughput and latency of ``session.run`` on one batch size."""

    batch_size: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    # Batch 1 only: the p50 when each call follows a pause (PAUSE_S) as a lone request's does.
    p50_paused_ms: float = float("nan")


# A served lone request finds the model idle for a while (the round trip, the client's own
# work); on this VM an ORT call after 2 ms idle takes ~15 % longer than back to back (cold
# caches and cores). The paused figure is the fair floor for concurrency 1.
PAUSE_S = 0.002


def served_model_file(model_dir: Path) -> tuple[ModelCard, Path]:
    """The card and ONNX file of the version the service serves (the highest)."""
    card = read_manifest(model_dir)
    versions = version_dirs(model_dir)
    if not versions:
        raise FileNotFoundError(f"{model_dir}: no version folders")
    return card, model_file(model_dir, max(versions))


def open_session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    """A CPU session with the service's thread setting (0 = ORT default)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def input_batch(card: ModelCard, images: Sequence[SampleImage], batch_size: int) -> np.ndarray:
    """The real images, preprocessed as the service does, cycled to ``batch_size``."""
    tensors = [preprocess_image(Image.open(BytesIO(img.data)), card.input) for img in images]
    return np.ascontiguousarray(np.stack([tensors[i % len(tensors)] for i in range(batch_size)]))


def measure(
    session: ort.InferenceSession,
    card: ModelCard,
    batch: np.ndarray,
    min_time_s: float,
    min_runs: int = 20,
    pause_s: float = 0.0,
) -> RawResult:
    """Run the batch repeatedly for at least ``min_time_s`` (after 3 warm-up runs), each call
    after ``pause_s`` of sleep (0: back to back); the pauses are not counted."""
    feed = {card.input.name: batch}
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    end = time.perf_counter() + min_time_s
    while len(times) < min_runs or time.perf_counter() < end:
        if pause_s:
            time.sleep(pause_s)
            end += pause_s
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times)
    return RawResult(
        batch_size=len(batch),
        images_per_s=len(batch) * len(arr) / float(arr.sum()),
        p50_ms=float(np.percentile(arr, 50) * 1000.0),
        p99_ms=float(np.percentile(arr, 99) * 1000.0),
    )


def raw_ceiling(
    model_dir: Path,
    images: Sequence[SampleImage],
    batch_sizes: Sequence[int],
    intra_op_threads: int,
    min_time_s: float,
) -> dict[int, RawResult]:
    """Raw in-process results of one model for each batch size."""
    card, path = served_model_file(model_dir)
    session = open_session(path, intra_op_threads)
    batches = {bs: input_batch(card, images, bs) for bs in sorted(set(batch_sizes))}
    results = {bs: measure(session, card, batch, min_time_s) for bs, batch in batches.items()}
    if 1 in results:
        paused = measure(session, card, batches[1], min_time_s, pause_s=PAUSE_S)
        results[1] = replace(results[1], p50_paused_ms=paused.p50_ms)
    return results
