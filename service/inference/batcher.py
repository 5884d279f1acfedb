"""DynamicBatcher: merge concurrent requests into batches for one model, safely under cancellation.

Contract (list in, list out): each request submits an array whose first axis holds its inputs;
a batch concatenates the requests on axis 0, the model returns one row per input, and each caller
gets back exactly its own rows by position. The queue is bounded (503 with Retry-After when full),
deadlines use ``time.monotonic()`` (504 when passed), and every result is set only
``if not future.done()``: a caller cancelled while its request sits in a batch is simply skipped,
the other callers of that batch still get their answers.

Batches are collected and run by dedicated inference threads, not by a task on the event loop:
under overload the loop takes a long round to come back to any one callback, and a loop-driven
worker could then start only one batch per round (throughput collapsed to max_batch_size per
round, so queued requests expired). The threads take the next batch as soon as one is done; only
the answers go back through the loop, one callback per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import (
    ClientGone,
    DeadlineExceeded,
    InferenceFailed,
    ServiceError,
    Unavailable,
)
from service.inference.cores import CoreBudget

log = logging.getLogger(__name__)

BatchModel = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One caller's share of a batch."""

    outputs: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


class BatchObserver:
    """Hooks the batcher calls (queue_depth from any thread); the default does nothing."""

    def queue_depth(self, depth: int) -> None:
        """The number of queued inputs changed."""

    def batch_started(self, queue_waits: list[float]) -> None:
        """A batch ran (told on the loop with its answers); each request's queue wait, seconds."""

    def batch_done(self, batch_size: int, inference_s: float) -> None:
        """A batch of ``batch_size`` inputs ran in ``inference_s`` seconds."""

    def abandoned(self, stage: str) -> None:
        """A caller left while its request was 'queued' (dropped) or 'running' (answer dropped)."""

    def worker_restarted(self) -> None:
        """An inference thread hit a fault of the batcher itself and was restarted."""


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float
    rows: int
    queued: bool = field(default=True)


class DynamicBatcher:
    """A bounded queue and inference thread(s) that run ``model`` on batches."""

    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int = 32,
        max_queue_delay_s: float = 0.002,
        max_queue_size: int = 512,
        timeout_s: float = 10.0,
        batching: bool = True,
        workers: int = 1,
        retry_after_s: int = 1,
        name: str = "model",
        observer: BatchObserver | None = None,
        arrivals: Callable[[], int] | None = None,
        inline: bool = False,
        in_progress: Callable[[], int] | None = None,
        cores: CoreBudget | None = None,
        core_weight: int = 1,
        narrow: BatchModel | None = None,
    ) -> None:
        """``arrivals`` (optional) counts requests still being read or decoded that may join a
        batch; when it is 0 a partial batch starts at once instead of waiting for the delay, so a
        lone request never pays max_queue_delay.

        ``inline``: a lone request (nothing queued, running or arriving) runs on the caller's
        thread, the event loop, instead of being handed to an inference thread and back. For a
        model whose call is shorter than those two thread wake-ups this is faster and cheaper.
        ``in_progress`` (optional) counts the requests the HTTP server holds, the caller's
        included: inline only when it is exactly 1 (0 means not known: batched, to be safe).
        ``cores`` (optional): the process's core budget; each batch holds ``core_weight`` of it
        (its session's intra-op threads) while it runs, so the batches of all models together
        do not oversubscribe the cores.
        ``narrow`` (optional): a one-thread session of the same model. A batch that starts
        while another batch of this model runs uses it (holding 1 core), a batch alone uses
        ``model`` (holding ``core_weight``): a big model gives every core to a lone request and
        runs one-thread batches side by side under load, the faster layout for throughput.
        """
        if max_batch_size < 1 or max_queue_size < 1 or workers < 1:
            raise ValueError("max_batch_size, max_queue_size and workers must be positive")
        self._model = model
        self._max_batch_size = max_batch_size
        self._max_delay = max(0.0, max_queue_delay_s)
        self._max_queue_size = max_queue_size
        self._timeout = timeout_s
        self._batching = batching
        self._retry_after = retry_after_s
        self._name = name
        self._observer = observer or BatchObserver()
        self._arrivals = arrivals
        # Queue, depth, closing flag and running batches are shared with the inference threads.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[_Pending] = deque()
        self._depth = 0
        self._closing = False
        self._n_workers = workers
        self._running: dict[int, list[_Pending]] = {}
        self._threads: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inline = inline
        self._in_progress = in_progress
        self._cores = cores
        self._core_weight = core_weight
        self._narrow = narrow

    @property
    def queue_depth(self) -> int:
        """Inputs waiting in the queue."""
        return self._depth

    @property
    def queued_requests(self) -> int:
        """Requests waiting in the queue (each of one or more inputs)."""
        return len(self._queue)

    @property
    def capacity(self) -> int:
        """Most inputs the queue holds (max_queue_size)."""
        return self._max_queue_size

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return bool(self._threads) and not self._closing

    def start(self) -> None:
        """Start the inference thread(s); answers go back to the running loop."""
        if self._threads:
            return
        self._loop = loop = asyncio.get_running_loop()
        for i in range(self._n_workers):
            done: asyncio.Future[None] = loop.create_future()
            self._spawn(i, done)
            self._threads.append(done)

    def _spawn(self, worker: int, done: asyncio.Future[None]) -> None:
        # Daemon threads: a batcher never closed cannot keep the interpreter from exiting.
        threading.Thread(
            target=self._work, args=(worker, done), name=f"infer-{self._name}-{worker}", daemon=True
        ).start()

    async def submit(
        self,
        inputs: np.ndarray,
        deadline: float | None = None,
        abandon: Callable[[], Awaitable[object]] | None = None,
    ) -> BatchResult:
        """Queue ``inputs`` ([n, ...], n >= 1) and wait for their rows of the model's output.

        ``deadline`` is a ``time.monotonic()`` instant (default: now + timeout). ``abandon``
        (optional) makes an awaitable that finishes when the caller is gone (its client
        disconnected); it is awaited only while the request waits for a batch, and when it
        finishes the request leaves the queue uncomputed, or its answer is dropped if its batch
        is already running, and this raises ClientGone.
        """
        if self._closing or not self._threads:
            raise Unavailable("the model is shutting down or not started", code="shutting_down")
        rows = len(inputs)
        if rows < 1:
            raise ValueError("submit needs at least one input")
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._timeout
        if deadline <= now:
            raise DeadlineExceeded(
                "the request deadline passed before it was queued", headers=self._retry_headers()
            )
        if self.inline and self._idle():
            return self._run_inline(inputs)
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, loop.create_future(), now, rows)
        with self._lock:
            if self._depth + rows > self._max_queue_size:
                raise Unavailable(
                    f"queue of model {self._name!r} is full ({self._max_queue_size} inputs)",
                    code="queue_full",
                    headers=self._retry_headers(),
                )
            self._queue.append(pending)
            self._set_depth(self._depth + rows)
            self._ready.notify()
        # A plain timer rather than asyncio.wait_for: one callback instead of a helper task.
        timer = loop.call_later(deadline - now, self._expire, pending, deadline - now)
        watcher = None
        if abandon is not None:
            watcher = asyncio.ensure_future(abandon())
            watcher.add_done_callback(lambda w: self._abandon(pending, w))
        try:
            return await pending.future
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            # Timed out or cancelled while still queued: take it out now so it holds no capacity.
            if pending.queued:
                with self._lock:
                    if pending.queued:
                        self._unqueue(pending)
                        with contextlib.suppress(ValueError):
                            self._queue.remove(pending)

    def _idle(self) -> bool:
        """Nothing queued, running or on its way: a batch could only hold this one request."""
        arriving = self._arrivals() if self._arrivals is not None else 0
        # 0 from in_progress means unknown (no stamping protocol): assume company, batch.
        alone = self._in_progress is None or self._in_progress() == 1
        return not self._queue and not self._running and arriving <= 0 and alone

    def _run_inline(self, inputs: np.ndarray) -> BatchResult:
        """Run a lone request on the calling thread (same contract and errors as a batch)."""
        t0 = time.perf_counter()
        try:
            out = self._model(inputs)
        except ServiceError:
            raise
        except Exception as exc:  # the model's fault, as for a batch
            raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from None
        inference_s = time.perf_counter() - t0
        if len(out) != len(inputs):
            raise InferenceFailed(
                f"model {self._name!r} returned {len(out)} rows for a batch of {len(inputs)} inputs"
            )
        self._observer.batch_started([0.0])
        self._observer.batch_done(len(inputs), inference_s)
        return BatchResult(out, 0.0, inference_s, len(inputs))

    def _abandon(self, pending: _Pending, watcher: asyncio.Future[object]) -> None:
        """The caller is gone: fail its future so that submit() returns and frees its slot."""
        if watcher.cancelled() or pending.future.done():
            return
        self._observer.abandoned("queued" if pending.queued else "running")
        pending.future.set_exception(ClientGone("the client disconnected before its answer"))

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self._retry_after)}

    def _expire(self, pending: _Pending, budget_s: float) -> None:
        if not pending.future.done():
            pending.future.set_exception(
                DeadlineExceeded(
                    f"no answer within the deadline ({budget_s * 1000:.0f} ms)",
                    headers=self._retry_headers(),
                )
            )

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, reject what is queued (503), let running batches finish within grace."""
        with self._lock:
            self._closing = True
            dropped = list(self._queue)
            self._queue.clear()
            for pending in dropped:
                self._unqueue(pending)
            self._ready.notify_all()
        self._fail(
            dropped, Unavailable("the model shut down before the request ran", code="shutting_down")
        )
        if self._threads:
            _, stuck = await asyncio.wait(self._threads, timeout=grace_s)
            if stuck:
                with self._lock:
                    running = [p for batch in self._running.values() for p in batch]
                self._fail(
                    running,
                    Unavailable("the model shut down during inference", code="shutting_down"),
                )

    # -- internals (the inference threads) ------------------------------------------------

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self._observer.queue_depth(depth)

    def _unqueue(self, pending: _Pending) -> None:
        pending.queued = False
        self._set_depth(self._depth - pending.rows)

    def _pop(self) -> _Pending:
        pending = self._queue.popleft()
        self._unqueue(pending)
        return pending

    def _work(self, worker: int, done: asyncio.Future[None]) -> None:
        """Thread body: collect a batch, run it, post the answers to the loop; until closed.

        The model's own errors fail only their batch (``_run``). A fault of the batcher itself
        fails the batch in hand with a 500 and starts the loop over (counted as a restart); should
        anything still end this thread while the batcher is open, a new thread takes its place,
        so the model never hangs with requests queued and nobody to run them.
        """
        batch: list[_Pending] | None = None
        try:
            while True:
                batch = None
                try:
                    batch = self._collect()
                    if batch is None:
                        return
                    with self._lock:
                        self._running[worker] = batch
                    self._run(batch)
                    batch = None  # answered (or failed) by _run
                except Exception as exc:
                    log.exception("inference thread of %s failed; restarting it", self._name)
                    self._restarted(batch, exc)
                    time.sleep(0.01)  # a fault that repeats must not spin a core
                finally:
                    with self._lock:  # after a fault too (an answered batch left already)
                        self._running.pop(worker, None)
        finally:
            if self._closing:
                self._post(_resolve, done)
            else:  # ended by something other than an Exception: replace the thread
                self._restarted(batch, None)
                self._spawn(worker, done)

    def _restarted(self, batch: list[_Pending] | None, exc: BaseException | None) -> None:
        """Count a restart; the batch that was in hand (if any) fails with a 500."""
        self._observer.worker_restarted()
        if batch:
            what = f"{type(exc).__name__}: {exc}" if exc is not None else "thread ended"
            failure = InferenceFailed(f"inference thread fault ({what})")
            self._post(self._fail, batch, failure)

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the event loop (dropped if the loop is gone)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    def _collect(self) -> list[_Pending] | None:
        """The next batch: the oldest live request plus whatever fits before its delay runs out.

        None once closing. Reads ``future.done()`` off the loop: at worst a request cancelled a
        moment ago is computed for nothing, its answer is then skipped.
        """
        with self._ready:
            while True:
                while not self._queue:
                    if self._closing:
                        return None
                    self._ready.wait()
                first = self._pop()
                if not first.future.done():
                    break
            batch, rows = [first], first.rows
            if not self._batching:
                return batch
            flush_at = first.enqueued + self._max_delay
            while rows < self._max_batch_size and not self._closing:
                if self._queue:
                    head = self._queue[0]
                    if head.future.done():
                        self._pop()
                        continue
                    if rows + head.rows > self._max_batch_size:
                        break
                    batch.append(self._pop())
                    rows += head.rows
                    continue
                if self._arrivals is not None and self._arrivals() <= 0:
                    break  # nothing else is on its way: waiting would only add latency
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            return batch

    def _run(self, batch: list[_Pending]) -> None:
        """Run one batch in this thread and post its answers (or its failure) to the loop.

        The batch leaves ``_running`` before its answers are posted: once a caller has its
        answer, a batch that starts next must not see this one as still running (it would take
        the narrow session beside a batch that is over).
        """
        started = time.monotonic()
        inputs = [p.inputs for p in batch]
        t0 = time.perf_counter()
        try:
            x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
            model, weight = self._model, self._core_weight
            if self._narrow is not None and len(self._running) > 1:
                model, weight = self._narrow, 1  # another batch runs: one thread each
            if self._cores is None:
                out = model(x)
            else:
                with self._cores.hold(weight):
                    t0 = time.perf_counter()  # inference time: not the wait for the cores
                    out = model(x)
            if len(out) != len(x):
                raise InferenceFailed(
                    f"model {self._name!r} returned {len(out)} rows for a batch of {len(x)} inputs"
                )
        except ServiceError as exc:
            self._finish(batch)
            self._post(self._failed, batch, exc, started)
            return
        except Exception as exc:  # the model's fault: fail this batch only, keep serving
            failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
            self._finish(batch)
            self._post(self._failed, batch, failure, started)
            return
        # One hand-off to the loop per batch: every wake-up of the loop from this thread is a
        # write to its self-pipe, and each costs this thread a wait for the GIL afterwards.
        inference_s = time.perf_counter() - t0
        self._finish(batch)
        self._post(self._deliver, batch, out, started, inference_s)

    def _finish(self, batch: list[_Pending]) -> None:
        """``batch`` no longer runs (its worker's entry leaves ``_running``)."""
        with self._lock:
            for worker, running in list(self._running.items()):
                if running is batch:
                    del self._running[worker]

    def _deliver(
        self, batch: list[_Pending], out: np.ndarray, started: float, inference_s: float
    ) -> None:
        """On the loop: every live caller of the batch gets its own rows."""
        self._observer.batch_started([started - p.enqueued for p in batch])
        total = sum(p.rows for p in batch)
        self._observer.batch_done(total, inference_s)
        offset = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(
                    BatchResult(
                        out[offset : offset + p.rows], started - p.enqueued, inference_s, total
                    )
                )
            offset += p.rows

    def _failed(self, batch: list[_Pending], exc: ServiceError, started: float) -> None:
        """On the loop: the batch's model call failed; every live caller gets ``exc``."""
        self._observer.batch_started([started - p.enqueued for p in batch])
        self._fail(batch, exc)

    @staticmethod
    def _fail(batch: list[_Pending], exc: ServiceError) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)
