"""DynamicBatcher: merge concurrent requests into batches for one model, safely under cancellation.

Contract (list in, list out): each request submits an array whose first axis holds its inputs;
a batch concatenates the requests on axis 0, the model returns one row per input, and each caller
gets back exactly its own rows by position. The queue is bounded (503 with Retry-After when full),
deadlines use ``time.monotonic()`` (504 when passed), inference runs in a dedicated executor, and
every result is set only ``if not future.done()``: a caller cancelled while its request sits in a
batch is simply skipped, the other callers of that batch still get their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, ServiceError, Unavailable

BatchModel = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One caller's share of a batch."""

    outputs: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


class BatchObserver:
    """Hooks the batcher calls on the event loop; the default does nothing (metrics override)."""

    def queue_depth(self, depth: int) -> None:
        """The number of queued inputs changed."""

    def batch_started(self, queue_waits: list[float]) -> None:
        """A batch left the queue; one queue wait (seconds) per request in it."""

    def batch_done(self, batch_size: int, inference_s: float) -> None:
        """A batch of ``batch_size`` inputs ran in ``inference_s`` seconds."""


@dataclass(eq=False, slots=True)
class _Pending:
    inputs: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float
    rows: int
    queued: bool = field(default=True)


class DynamicBatcher:
    """A bounded queue and worker(s) that run ``model`` on batches in a dedicated executor."""

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
    ) -> None:
        """``arrivals`` (optional) counts requests still being read or decoded that may join a
        batch; when it is 0 a partial batch starts at once instead of waiting for the delay, so a
        lone request never pays max_queue_delay."""
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
        self._queue: deque[_Pending] = deque()
        self._depth = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._n_workers = workers
        self._workers: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"infer-{name}")

    @property
    def queue_depth(self) -> int:
        """Inputs waiting in the queue."""
        return self._depth

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return bool(self._workers) and not self._closing

    def start(self) -> None:
        """Start the worker task(s) on the running loop."""
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(), name=f"batcher-{self._name}-{i}")
            for i in range(self._n_workers)
        ]

    async def submit(self, inputs: np.ndarray, deadline: float | None = None) -> BatchResult:
        """Queue ``inputs`` ([n, ...], n >= 1) and wait for their rows of the model's output.

        ``deadline`` is a ``time.monotonic()`` instant (default: now + timeout).
        """
        if self._closing or not self._workers:
            raise Unavailable("the model is shutting down or not started", code="shutting_down")
        rows = len(inputs)
        if rows < 1:
            raise ValueError("submit needs at least one input")
        if self._depth + rows > self._max_queue_size:
            raise Unavailable(
                f"queue of model {self._name!r} is full ({self._max_queue_size} inputs)",
                code="queue_full",
                headers=self._retry_headers(),
            )
        now = time.monotonic()
        if deadline is None:
            deadline = now + self._timeout
        if deadline <= now:
            raise DeadlineExceeded(
                "the request deadline passed before it was queued", headers=self._retry_headers()
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, loop.create_future(), now, rows)
        self._queue.append(pending)
        self._set_depth(self._depth + rows)
        self._wakeup.set()
        # A plain timer rather than asyncio.wait_for: one callback instead of a helper task.
        timer = loop.call_later(deadline - now, self._expire, pending, deadline - now)
        try:
            return await pending.future
        finally:
            timer.cancel()
            # Timed out or cancelled while still queued: take it out now so it holds no capacity.
            if pending.queued:
                self._unqueue(pending)
                with contextlib.suppress(ValueError):
                    self._queue.remove(pending)

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
        self._closing = True
        while self._queue:
            pending = self._queue.popleft()
            self._unqueue(pending)
            if not pending.future.done():
                pending.future.set_exception(
                    Unavailable("the model shut down before the request ran", code="shutting_down")
                )
        self._wakeup.set()
        if self._workers:
            _, still_running = await asyncio.wait(self._workers, timeout=grace_s)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals -------------------------------------------------------------------------

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

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                return
            await self._run(batch)

    async def _wait_for_work(self, timeout: float | None) -> bool:
        """Wait until something is queued (or closing); False when ``timeout`` passed first."""
        self._wakeup.clear()
        if timeout is None:
            await self._wakeup.wait()
            return True
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _collect(self) -> list[_Pending]:
        """The next batch: the oldest live request plus whatever fits before its delay runs out."""
        while True:
            while not self._queue:
                if self._closing:
                    return []
                await self._wait_for_work(None)
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
            if remaining <= 0 or not await self._wait_for_work(remaining):
                break
        return batch

    def _infer(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """Runs in the executor: concatenate, run the model, check the list-out contract."""
        t0 = time.perf_counter()
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=0)
        out = self._model(x)
        elapsed = time.perf_counter() - t0
        if len(out) != len(x):
            raise InferenceFailed(
                f"model {self._name!r} returned {len(out)} rows for a batch of {len(x)} inputs"
            )
        return out, elapsed

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        self._observer.batch_started([started - p.enqueued for p in batch])
        total = sum(p.rows for p in batch)
        loop = asyncio.get_running_loop()
        try:
            out, inference_s = await loop.run_in_executor(
                self._executor, self._infer, [p.inputs for p in batch]
            )
        except asyncio.CancelledError:
            self._fail(
                batch, Unavailable("the model shut down during inference", code="shutting_down")
            )
            raise
        except ServiceError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # the model's fault: fail this batch only, keep serving
            self._fail(batch, InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}"))
            return
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

    @staticmethod
    def _fail(batch: list[_Pending], exc: ServiceError) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)
