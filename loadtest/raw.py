"""The ceiling: ONNX Runtime called directly, in process, at its best thread layout and batch size.

The machine's best is searched over thread layouts on the ``N`` cores this process may use (its
affinity mask): one session with 1 or ``N`` intra-op threads and one caller; ``N`` one-thread
sessions run by ``N`` callers at once; ``N`` callers sharing one one-thread session (what the
service's inference workers do). Each (layout, batch size) cell runs for ``min_time_s``. The
throughput ceiling is the best images/s over every cell; the batch-1 latency reference is the
best p50 of a lone caller (one caller at a time), also timed after pauses as a lone served
request finds the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from loadtest.payloads import SampleImage
from service.contract.model_card import ModelCard, model_file, read_manifest, version_dirs
from service.contract.preprocess import preprocess_image
from service.settings import usable_cores

# The batch sizes every search covers: lone calls, a small batch, the service's default largest.
SEARCH_BATCH_SIZES = (1, 8, 32)


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


@dataclass(frozen=True)
class RawLayout:
    """How raw calls use the cores: sessions, intra-op threads of each, concurrent callers."""

    sessions: int
    threads: int
    callers: int

    @property
    def label(self) -> str:
        """E.g. '2 sessions x 1 thread' or '1 session x 1 thread, 2 callers'."""
        text = (
            f"{self.sessions} session{'s' if self.sessions > 1 else ''} x "
            f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        )
        return text if self.callers == self.sessions else f"{text}, {self.callers} callers"


def layouts_for(cores: int) -> list[RawLayout]:
    """The layouts tried on ``cores`` cores (one of each when they coincide, on one core)."""
    n = max(1, cores)
    tried = [RawLayout(1, 1, 1), RawLayout(1, n, 1), RawLayout(n, 1, n), RawLayout(1, 1, n)]
    return list(dict.fromkeys(tried))


@dataclass(frozen=True)
class RawCell:
    """One measured (layout, batch size)."""

    layout: RawLayout
    result: RawResult


@dataclass(frozen=True)
class RawCeiling:
    """Every measured cell of one model, and the best of them."""

    cells: tuple[RawCell, ...]

    @property
    def best(self) -> RawCell:
        """The cell with the most images/s: the throughput ceiling."""
        return max(self.cells, key=lambda c: c.result.images_per_s)

    @property
    def lone(self) -> RawCell | None:
        """The lone-caller batch-1 cell with the lowest p50: the latency reference."""
        lone = [c for c in self.cells if c.result.batch_size == 1 and c.layout.callers == 1]
        return min(lone, key=lambda c: c.result.p50_ms) if lone else None

    def at(self, batch_size: int) -> RawResult | None:
        """The best images/s over the layouts at one batch size; at batch 1 the latencies are the
        lone caller's reference (``lone``), which may come from another layout."""
        cells = [c for c in self.cells if c.result.batch_size == batch_size]
        if not cells:
            return None
        top = max(cells, key=lambda c: c.result.images_per_s).result
        lone = self.lone
        if batch_size == 1 and lone is not None:
            ref = lone.result
            top = replace(
                top, p50_ms=ref.p50_ms, p99_ms=ref.p99_ms, p50_paused_ms=ref.p50_paused_ms
            )
        return top

    @property
    def best_label(self) -> str:
        """The winning layout and batch size, e.g. '2 sessions x 1 thread, batch 32'."""
        best = self.best
        return f"{best.layout.label}, batch {best.result.batch_size}"

    def describe(self) -> str:
        """One line naming the winners, e.g. 'raw best: 2 sessions x 1 thread, batch 32, 7,100
        img/s; lone batch 1: 1 session x 2 threads, p50 1.60 ms (1.90 ms after 2 ms pauses)'."""
        best = self.best
        line = f"raw best: {self.best_label}, {best.result.images_per_s:,.0f} img/s"
        lone = self.lone
        if lone is not None:
            line += (
                f"; lone batch 1: {lone.layout.label}, p50 {lone.result.p50_ms:.2f} ms "
                f"({lone.result.p50_paused_ms:.2f} ms after {PAUSE_S * 1000:.0f} ms pauses)"
            )
        return line


def served_model_file(model_dir: Path) -> tuple[ModelCard, Path]:
    """The card and ONNX file of the version the service serves (the highest)."""
    card = read_manifest(model_dir)
    versions = version_dirs(model_dir)
    if not versions:
        raise FileNotFoundError(f"{model_dir}: no version folders")
    return card, model_file(model_dir, max(versions))


def open_session(path: Path, intra_op_threads: int) -> ort.InferenceSession:
    """A CPU session with ``intra_op_threads`` threads (0 = ORT default), ORT's defaults else."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def input_batch(card: ModelCard, images: Sequence[SampleImage], batch_size: int) -> np.ndarray:
    """The real images, preprocessed as the service does, cycled to ``batch_size``."""
    tensors = [preprocess_image(Image.open(BytesIO(img.data)), card.input) for img in images]
    return np.ascontiguousarray(np.stack([tensors[i % len(tensors)] for i in range(batch_size)]))


def _summary(batch_size: int, times: list[float], images_per_s: float) -> RawResult:
    arr = np.asarray(times)
    return RawResult(
        batch_size=batch_size,
        images_per_s=images_per_s,
        p50_ms=float(np.percentile(arr, 50) * 1000.0),
        p99_ms=float(np.percentile(arr, 99) * 1000.0),
    )


def _call_loop(
    session: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    end: float,
    min_runs: int,
    pause_s: float,
    times: list[float],
) -> None:
    while len(times) < min_runs or time.perf_counter() < end:
        if pause_s:
            time.sleep(pause_s)
            end += pause_s
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)


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
    _call_loop(session, feed, time.perf_counter() + min_time_s, min_runs, pause_s, times)
    return _summary(len(batch), times, len(batch) * len(times) / float(sum(times)))


def measure_callers(
    sessions: Sequence[ort.InferenceSession],
    feed: dict[str, np.ndarray],
    callers: int,
    min_time_s: float,
    min_runs: int,
) -> RawResult:
    """``callers`` threads calling at once (caller i on session i mod len) for ``min_time_s``;
    images/s over the wall time from the common start to the last caller's end."""
    for session in sessions:
        for _ in range(3):
            session.run(None, feed)
    per_caller: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)

    def caller(i: int) -> None:
        start.wait()
        end = time.perf_counter() + min_time_s
        _call_loop(sessions[i % len(sessions)], feed, end, min_runs, 0.0, per_caller[i])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    times = [x for calls in per_caller for x in calls]
    rows = len(next(iter(feed.values())))
    return _summary(rows, times, rows * len(times) / wall)


def search_layouts(
    path: Path,
    input_name: str,
    batches: Mapping[int, np.ndarray],
    min_time_s: float,
    cores: int | None = None,
    min_runs: int = 5,
) -> list[RawCell]:
    """One cell per (layout, batch size) on ``cores`` cores (default: the affinity mask's);
    a lone caller's batch 1 is also timed after PAUSE_S pauses (``p50_paused_ms``)."""
    cells: list[RawCell] = []
    for layout in layouts_for(cores if cores is not None else usable_cores()):
        sessions = [open_session(path, layout.threads) for _ in range(layout.sessions)]
        for batch in batches.values():
            feed = {input_name: batch}
            result = measure_callers(sessions, feed, layout.callers, min_time_s, min_runs)
            if len(batch) == 1 and layout.callers == 1:
                paused: list[float] = []
                end = time.perf_counter() + min_time_s
                _call_loop(sessions[0], feed, end, min_runs, PAUSE_S, paused)
                result = replace(result, p50_paused_ms=float(np.median(paused)) * 1000.0)
            cells.append(RawCell(layout, result))
        del sessions
    return cells


def raw_ceiling(
    model_dir: Path,
    images: Sequence[SampleImage],
    batch_sizes: Sequence[int] = SEARCH_BATCH_SIZES,
    min_time_s: float = 1.0,
    cores: int | None = None,
) -> RawCeiling:
    """The best raw in-process figures of one model's served version on the real images, over
    the thread layouts and ``batch_sizes`` (1, 8 and 32 are always among them)."""
    card, path = served_model_file(model_dir)
    sizes = sorted(set(batch_sizes) | set(SEARCH_BATCH_SIZES))
    batches = {bs: input_batch(card, images, bs) for bs in sizes}
    return RawCeiling(tuple(search_layouts(path, card.input.name, batches, min_time_s, cores)))
