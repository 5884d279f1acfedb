"""Thread layout of a model version (ORT intra-op threads, inference workers), chosen at load.

The rule (``choose_layout``), for one version on a CPU, where ``cores`` is what this process may
use (its affinity mask divided by the worker processes):

* Time a batch-1 call on a 1-thread session, each call after a short pause as a lone request
  finds the model. Under ``SMALL_MS`` the model is *small* without more ado: waking a second
  thread costs about what splitting so short a call could save.
* Otherwise time it on a session with every core, interleaved with the 1-thread session round
  by round, so that the machine's drift falls on both (medians of ``PROBE_ROUNDS`` rounds of
  ``PROBE_RUNS`` calls each). At least ``SPEEDUP`` times faster: the model is *big*. A batch
  that runs alone (a lone request, light load) gets every core; under load, when a batch starts
  while another runs, it runs on a second, one-thread session, so ``cores`` one-thread batches
  run side by side: the layout that gives the most images per second (each core on its own
  batch, no thread synchronisation), as the raw layout search shows on WRN-40-2. Less than
  ``SPEEDUP``: the model is *small*.
* A small model gets 1 thread and runs up to ``cores`` batches side by side, so that one busy
  model fills the machine without a pool per batch. Many busy models do not oversubscribe it:
  every batch of every model holds its threads' worth of the process's ``CoreBudget`` while it
  runs (service/inference/cores.py).

Only batch 1 is timed: a batch of N gives ORT's kernels N times the work to split, so it
usually splits at least as well as a lone call (a big model uses every core under load too), and
a model that does not gain still fills the cores under load with side-by-side batches; timing
batch N would cost start-up (~0.1 s a call for the fp32 WRN-40-2 teacher at 32) without changing
the choice. The extra cost of the rule at start-up: ten paused batch-1 calls, plus, for a model
over ``SMALL_MS`` on several cores, a second session with its warm-up and ``PROBE_ROUNDS`` x
``PROBE_RUNS`` paused calls on each session (about 0.3 s for the fp32 WRN-40-2 teacher; the
loser is dropped).

The comparison is interleaved because one pass per session, one after the other, let the
machine's noise decide: on a shared 2-core VM the fp32 WRN-40-2 teacher measured 1.14-1.30x
faster on 2 threads in four start-ups, so with a 1.25x bar it got 1 thread in three of them.

Explicit settings always win; the other half of the layout is then derived from them. On CUDA the
GPU runs the batches: 1 thread, 1 batch at a time, unless set.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.contract.model_card import ModelCard
from service.inference.session import CUDA, OnnxModel, warm_up_batch_sizes
from service.settings import AUTO, Settings, usable_cores

SPEEDUP = 1.1  # batch 1 on every core must be this much faster than on 1 thread
SMALL_MS = 0.5  # a batch-1 call shorter than this on 1 thread stays on 1 thread
PROBE_RUNS = 10
PROBE_ROUNDS = 3
PROBE_PAUSE_S = 0.001  # long enough for ORT's non-spinning threads to go back to sleep


@dataclass(frozen=True)
class Layout:
    """How one model version uses the cores, where the choice came from, and why."""

    intra_op_threads: int
    inference_workers: int
    source: str  # "auto" (chosen here, in part or whole) or "settings" (both given)
    reason: str
    # A big model under load: a batch that starts beside another runs on a one-thread session.
    side_by_side: bool = False

    def describe(self) -> dict[str, Any]:
        """The layout as /models shows it."""
        return {
            "intra_op_threads": self.intra_op_threads,
            "inference_workers": self.inference_workers,
            "under_load": (
                f"{self.inference_workers} one-thread batches side by side"
                if self.side_by_side
                else f"{self.inference_workers} batch(es) of {self.intra_op_threads} thread(s)"
            ),
            "source": self.source,
            "reason": self.reason,
        }


def process_cores(processes: int | str) -> int:
    """The cores one of ``processes`` worker processes may count on (at least 1). 'auto' is
    only ever seen by an app made in-process (``python -m service`` passes its workers the
    number it chose): one process."""
    count = processes if isinstance(processes, int) else 1
    return max(1, usable_cores() // max(1, count))


def _batches(workers: int) -> str:
    return "one batch at a time" if workers == 1 else f"{workers} batches at a time"


def choose_layout(
    cores: int,
    threads: int | str,
    workers: int | str,
    lone_ms: Callable[[tuple[int, ...]], list[float]],
    gpu: bool = False,
    buckets: tuple[int, ...] = (),
) -> Layout:
    """The layout of one version (see the module's docstring for the rule).

    ``threads`` and ``workers`` are the settings ('auto' or a count; 0 threads is ORT's default,
    one per core); ``lone_ms(counts)`` times a lone batch-1 call on a session of each thread
    count, interleaved, and is called only when the choice needs it. ``buckets``: on CUDA, the
    shape buckets the batches are padded to (the layout's reason names them).
    """
    source = "settings" if threads != AUTO and workers != AUTO else AUTO
    set_workers = None if workers == AUTO else int(workers)
    given = "" if set_workers is None else f", inference_workers={set_workers} from the settings"

    def workers_for(n_threads: int) -> int:
        if set_workers is not None:
            return set_workers
        return max(1, cores // (cores if n_threads == 0 else n_threads))

    if threads != AUTO:
        n = int(threads)
        if set_workers is None:
            why = f"intra_op_threads={n} from the settings; {_batches(workers_for(n))}"
        else:
            why = f"intra_op_threads={n} and inference_workers={set_workers} from the settings"
        return Layout(n, workers_for(n), source, why)
    if gpu:
        padded = ""
        if buckets:
            sizes = ", ".join(map(str, buckets))
            padded = f", each padded to a shape bucket ({sizes}) with a session per bucket"
        return Layout(1, set_workers or 1, source, f"CUDA runs the batches{padded}{given}")
    small = "1 thread"
    if set_workers is None:
        small += f" per call, {_batches(workers_for(1))}"
    # Every core per call, or as many as leave each of the set workers its own.
    wide = cores if set_workers is None else max(1, cores // set_workers)
    if wide == 1:
        why = f"{cores} core(s) for this process: {small}{given}"
        return Layout(1, workers_for(1), source, why)
    (one,) = lone_ms((1,))
    if one < SMALL_MS:
        why = f"batch 1 takes {one:.2f} ms on 1 thread: small model, {small}{given}"
        return Layout(1, workers_for(1), source, why)
    one, many = lone_ms((1, wide))
    timed = f"batch 1 takes {one:.2f} ms on 1 thread, {many:.2f} ms on {wide}"
    if one >= SPEEDUP * many:
        if set_workers is None:
            why = (
                f"{timed}: big model, every core for a batch alone, {cores} one-thread batches "
                "side by side under load"
            )
            return Layout(wide, cores, source, why, side_by_side=True)
        why = f"{timed}: big model, {wide} threads per call{given}"
        return Layout(wide, workers_for(wide), source, why)
    why = f"{timed}: more threads do not pay, {small}{given}"
    return Layout(1, workers_for(1), source, why)


def open_with_layout(
    path: Path, card: ModelCard, provider: str, settings: Settings
) -> tuple[OnnxModel, OnnxModel | None, Layout]:
    """The version's warm session, opened with the layout chosen for it, its one-thread session
    for batches side by side (a big model under load; else None), and the layout."""
    sessions: dict[int, OnnxModel] = {}

    largest = max(settings.max_batch_size, settings.max_inputs_per_request)
    warm_sizes = warm_up_batch_sizes(provider, largest)

    def session(threads: int) -> OnnxModel:
        if threads not in sessions:
            model = OnnxModel(path, card, provider, threads, spinning=settings.intra_op_spinning)
            model.warm_up(settings.warmup_runs, warm_sizes)
            sessions[threads] = model
        return sessions[threads]

    def lone_ms(counts: tuple[int, ...]) -> list[float]:
        if len(counts) == 1:
            return [session(counts[0]).batch1_seconds(PROBE_RUNS, PROBE_PAUSE_S) * 1000.0]
        rounds: dict[int, list[float]] = {n: [] for n in counts}
        for _ in range(PROBE_ROUNDS):
            for n in counts:
                rounds[n].append(session(n).batch1_seconds(PROBE_RUNS, PROBE_PAUSE_S) * 1000.0)
        return [statistics.median(rounds[n]) for n in counts]

    layout = choose_layout(
        process_cores(settings.workers),
        settings.intra_op_threads,
        settings.inference_workers,
        lone_ms,
        gpu=provider == CUDA,
        buckets=warm_sizes if provider == CUDA else (),
    )
    runtime = session(layout.intra_op_threads)
    narrow = session(1) if layout.side_by_side else None
    sessions.clear()  # the probe's other session, if any, is released here
    return runtime, narrow, layout
