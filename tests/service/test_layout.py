"""Thread layout per model version: the decision rule at both ends, settings, /models, metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.contract.model_card import model_file, read_manifest
from service.inference.layout import (
    PROBE_ROUNDS,
    SMALL_MS,
    SPEEDUP,
    Layout,
    choose_layout,
    open_with_layout,
)
from service.inference.session import CPU, CUDA, OnnxModel, warm_up_batch_sizes
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.support.server import running_service

AUTO = "auto"


class Timings:
    """A fake model: batch-1 ms per thread count, and which counts were timed together."""

    def __init__(self, ms: dict[int, float]) -> None:
        self.ms = ms
        self.timed: list[tuple[int, ...]] = []

    def __call__(self, counts: tuple[int, ...]) -> list[float]:
        self.timed.append(counts)
        return [self.ms[n] for n in counts]


def never(counts: tuple[int, ...]) -> list[float]:
    raise AssertionError(f"timed on {counts} thread(s) though the choice needs no timing")


# The fp32 WRN-40-2 teacher and the int8 WRN-16-1 student on this project's 2-core VM.
TEACHER = {1: 2.9, 2: 1.6, 4: 0.9, 8: 0.6, 16: 0.45}
STUDENT = {1: 0.3, 2: 0.28, 4: 0.3, 8: 0.35, 16: 0.4}
MEDIUM = {1: 1.0, 2: 0.97, 4: 0.95, 8: 0.95}  # over SMALL_MS, more threads do not pay


@pytest.mark.parametrize("cores", [2, 4, 8])
def test_a_big_model_takes_every_core_alone_and_one_thread_batches_under_load(
    cores: int,
) -> None:
    timings = Timings(TEACHER)
    layout = choose_layout(cores, AUTO, AUTO, timings)
    assert (layout.intra_op_threads, layout.inference_workers) == (cores, cores)
    # the 1-thread session is timed again beside the wide one, round by round
    assert layout.side_by_side and layout.source == "auto" and timings.timed == [(1,), (1, cores)]
    assert "big model, every core for a batch alone" in layout.reason
    assert layout.describe()["under_load"] == f"{cores} one-thread batches side by side"
    assert f"{TEACHER[1]:.2f} ms on 1 thread, {TEACHER[cores]:.2f} ms on {cores}" in layout.reason


@pytest.mark.parametrize("cores", [2, 4, 8])
def test_a_small_model_keeps_one_thread_and_runs_batches_side_by_side(cores: int) -> None:
    timings = Timings(STUDENT)
    layout = choose_layout(cores, AUTO, AUTO, timings)
    assert (layout.intra_op_threads, layout.inference_workers) == (1, cores)
    assert timings.timed == [(1,)]  # under SMALL_MS: no second session is opened
    assert "small model" in layout.reason and f"{cores} batches at a time" in layout.reason
    assert STUDENT[1] < SMALL_MS


def test_a_model_that_gains_too_little_from_threads_keeps_one() -> None:
    timings = Timings(MEDIUM)
    layout = choose_layout(4, AUTO, AUTO, timings)
    assert (layout.intra_op_threads, layout.inference_workers) == (1, 4)
    assert timings.timed == [(1,), (1, 4)] and "more threads do not pay" in layout.reason
    assert MEDIUM[1] < SPEEDUP * MEDIUM[4]


def test_the_probe_times_both_sessions_round_by_round(
    digits_repo: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drift of the machine while the probe runs falls on both sessions alike: calls alternate
    between the 1-thread and the wide session, and each side is the median of its rounds."""
    calls: list[int] = []
    slow_start = iter([9.0, 9.0])  # the first two 1-thread passes: the machine was busy

    def fake_batch1(self: OnnxModel, runs: int = 10, pause_s: float = 0.0) -> float:
        threads = self.session.get_session_options().intra_op_num_threads
        calls.append(threads)
        ms = next(slow_start, 3.0) if threads == 1 else 2.5
        return ms / 1000.0

    monkeypatch.setattr(OnnxModel, "batch1_seconds", fake_batch1)
    monkeypatch.setattr("service.inference.layout.process_cores", lambda workers: 2)
    card = read_manifest(digits_repo / "digits-logreg")
    path = model_file(digits_repo / "digits-logreg", card.version)
    _, narrow, layout = open_with_layout(path, card, "CPUExecutionProvider", make_settings())
    assert calls == [1] + [1, 2] * PROBE_ROUNDS
    # medians: 1 thread of (9, 3, 3) is 3.0 ms, 2 threads 2.5 ms: 1.2x, a big model
    assert "3.00 ms on 1 thread, 2.50 ms on 2" in layout.reason
    assert layout.intra_op_threads == 2 and layout.side_by_side and narrow is not None


def test_one_core_needs_no_timing() -> None:
    layout = choose_layout(1, AUTO, AUTO, never)
    assert (layout.intra_op_threads, layout.inference_workers) == (1, 1)


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_no_single_batch_oversubscribes_and_a_lone_big_request_gets_every_core(
    cores: int,
) -> None:
    """Each version's batches fit the cores (a big model's batches beside another run on one
    thread each); many busy versions together are held to the cores by the process's core
    budget (tests/service/test_cores.py), not by shrinking each one."""
    small = choose_layout(cores, AUTO, AUTO, Timings(STUDENT))
    big = choose_layout(cores, AUTO, AUTO, Timings(TEACHER))
    assert small.intra_op_threads * small.inference_workers <= cores
    assert small.inference_workers == cores  # one busy small model fills the machine
    assert big.intra_op_threads == cores  # a lone request gets every core
    assert big.inference_workers == (cores if big.side_by_side else 1)


def test_explicit_settings_win() -> None:
    both = choose_layout(4, 1, 3, never)
    assert (both.intra_op_threads, both.inference_workers, both.source) == (1, 3, "settings")
    assert "from the settings" in both.reason
    threads = choose_layout(4, 2, AUTO, never)  # workers derived: 4 cores / 2 threads
    assert (threads.intra_op_threads, threads.inference_workers, threads.source) == (2, 2, "auto")
    ort_default = choose_layout(4, 0, AUTO, never)  # 0: ORT's one thread per core
    assert (ort_default.intra_op_threads, ort_default.inference_workers) == (0, 1)
    # Workers set, threads auto: a big model gets the cores left to each worker.
    timings = Timings(TEACHER)
    workers = choose_layout(8, AUTO, 2, timings)
    assert (workers.intra_op_threads, workers.inference_workers) == (4, 2)
    assert timings.timed == [(1,), (1, 4)]
    assert "inference_workers=2 from the settings" in workers.reason
    assert choose_layout(2, AUTO, 2, never).intra_op_threads == 1


def test_cuda_runs_one_batch_at_a_time_on_one_cpu_thread() -> None:
    layout = choose_layout(8, AUTO, AUTO, never, gpu=True)
    assert (layout.intra_op_threads, layout.inference_workers) == (1, 1)
    # /models says which shape buckets the batches are padded to
    padded = choose_layout(8, AUTO, AUTO, never, gpu=True, buckets=(1, 4, 16, 64))
    assert "padded to a shape bucket (1, 4, 16, 64)" in padded.reason


def test_a_cuda_model_warms_every_shape_bucket_a_batch_can_fall_in_and_a_cpu_one_two() -> None:
    # On CUDA each shape bucket has a session of its own, opened and set up for its shape by its
    # first call: every bucket up to the largest batch runs before the version is ready.
    assert warm_up_batch_sizes(CUDA, 32) == (1, 4, 16, 64)
    assert warm_up_batch_sizes(CUDA, 16) == (1, 4, 16)
    assert warm_up_batch_sizes(CUDA, 0) == (1,)
    assert warm_up_batch_sizes(CPU, 32) == (1, 8)


def test_the_served_session_has_the_chosen_threads(make_settings: Callable[..., Settings]) -> None:
    registry = ModelRegistry.load(make_settings(), ServiceMetrics())
    for served in registry.all():
        assert isinstance(served.layout, Layout) and served.layout.source == "auto"
        opts = served.runtime.session.get_session_options()
        assert opts.intra_op_num_threads == served.layout.intra_op_threads
        assert served.batch1_ms > 0 and served.per_image_ms > 0


@pytest.mark.timeout(120)
def test_models_and_metrics_show_each_versions_layout(digits_repo: Path) -> None:
    with running_service(digits_repo) as (url, _):
        models = httpx.get(url + "/models", timeout=30).json()["models"]
        metrics = httpx.get(url + "/metrics", timeout=30).text
    for model in models:
        layout = model["versions"][0]["layout"]
        assert layout["source"] == "auto" and layout["reason"]
        assert layout["intra_op_threads"] >= 1 and layout["inference_workers"] >= 1
        labels = f'model="{model["name"]}",version="{model["versions"][0]["version"]}"'
        threads = f"rocketserve_model_intra_op_threads{{{labels}}} "
        assert f"{threads}{float(layout['intra_op_threads'])}" in metrics
    env = {"ROCKETSERVE_INTRA_OP_THREADS": "2", "ROCKETSERVE_INFERENCE_WORKERS": "3"}
    with running_service(digits_repo, env) as (url, _):
        models = httpx.get(url + "/models", timeout=30).json()["models"]
    for model in models:
        layout = model["versions"][0]["layout"]
        assert (layout["intra_op_threads"], layout["inference_workers"]) == (2, 3)
        assert layout["source"] == "settings"
