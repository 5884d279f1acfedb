"""DynamicBatcher with controlled fake models: batching rules, limits, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from service.errors import DeadlineExceeded, InferenceFailed, Unavailable
from service.inference.batcher import BatchResult, DynamicBatcher

pytestmark = pytest.mark.timeout(30)


class FakeModel:
    """Records every batch, optionally holds each call until released, answers 10 * input."""

    def __init__(self, hold: bool = False, fail_if: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.batches: list[list[float]] = []
        self.entered = asyncio.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail_if = fail_if
        self.short = False

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x[:, 0].tolist())
        self.loop.call_soon_threadsafe(self.entered.set)
        assert self.release.wait(10), "fake model was never released"
        if self.fail_if is not None and self.fail_if in x[:, 0]:
            raise RuntimeError("model exploded")
        if self.short:
            return x[:-1] * 10
        return x * 10

    def seen(self) -> list[float]:
        """Every input value that reached the model."""
        return [v for b in self.batches for v in b]


def rows(*values: float) -> np.ndarray:
    """A request of len(values) inputs, each a one-number row."""
    return np.asarray(values, dtype=np.float32)[:, None]


@pytest.fixture
def release_all() -> Iterator[list[FakeModel]]:
    """Models registered here are released at teardown so no executor thread stays blocked."""
    models: list[FakeModel] = []
    yield models
    for m in models:
        m.release.set()


def make(model: FakeModel, **kw: object) -> DynamicBatcher:
    params: dict[str, object] = {"max_batch_size": 4, "max_queue_delay_s": 5.0, "timeout_s": 10.0}
    params.update(kw)
    batcher = DynamicBatcher(model, **params)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def until(condition: object, what: str) -> None:
    """Yield to the loop until ``condition()`` holds (no fixed sleeps)."""
    for _ in range(10_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


def values(result: BatchResult) -> list[float]:
    return result.outputs[:, 0].tolist()


async def test_results_by_position_and_full_batches_do_not_wait() -> None:
    model = FakeModel()
    # A 5 s delay would show as a timeout: full batches must go at once.
    batcher = make(model, max_batch_size=3)
    results = await asyncio.gather(*(batcher.submit(rows(i)) for i in range(6)))
    assert [values(r) for r in results] == [[i * 10.0] for i in range(6)]
    assert model.batches == [[0, 1, 2], [3, 4, 5]]
    assert {r.batch_size for r in results} == {3}
    await batcher.close()


async def test_batches_never_exceed_max_size_nor_split_a_request(
    release_all: list[FakeModel],
) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=3)
    first = asyncio.create_task(batcher.submit(rows(0, 1, 2)))
    await model.entered.wait()
    # Queued while the model is busy: 2+1 fit, the next 2 does not join 2+1, then 2+1 again.
    later = [asyncio.create_task(batcher.submit(rows(*v))) for v in ([3, 4], [5], [6, 7], [8])]
    await until(lambda: batcher.queue_depth == 6, "six inputs queued")
    model.release.set()
    done = await asyncio.gather(first, *later)
    assert model.batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert [values(r) for r in done[1:]] == [[30, 40], [50], [60, 70], [80]]
    assert max(len(b) for b in model.batches) <= 3
    await batcher.close()


async def test_max_delay_bounds_the_wait_for_a_partial_batch() -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=8, max_queue_delay_s=0.05)
    t0 = time.monotonic()
    pair = await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)))
    waited = time.monotonic() - t0
    assert waited >= 0.045  # the batch was not full, so it waited for the delay...
    assert waited < 5  # ...and not for more than the delay (generous bound for a busy machine)
    assert model.batches == [[1, 2]]
    assert pair[0].batch_size == 2 and pair[0].queue_s >= 0.045
    await batcher.close()

    eager = FakeModel()
    batcher = make(eager, max_batch_size=8, max_queue_delay_s=0.0)
    assert values(await batcher.submit(rows(3))) == [30]
    assert eager.batches == [[3]]
    await batcher.close()


async def test_batching_off_runs_each_request_alone() -> None:
    model = FakeModel()
    batcher = make(model, batching=False)
    results = await asyncio.gather(*(batcher.submit(rows(i, i + 0.5)) for i in range(3)))
    assert model.batches == [[0, 0.5], [1, 1.5], [2, 2.5]]
    assert [r.batch_size for r in results] == [2, 2, 2]
    await batcher.close()


async def test_full_queue_rejects_at_once_with_retry_after(release_all: list[FakeModel]) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=1, max_queue_size=2, retry_after_s=3)
    running = asyncio.create_task(batcher.submit(rows(0)))
    await model.entered.wait()
    queued = [asyncio.create_task(batcher.submit(rows(i))) for i in (1, 2)]
    await until(lambda: batcher.queue_depth == 2, "queue full")
    with pytest.raises(Unavailable) as info:
        await batcher.submit(rows(3))
    assert info.value.status == 503 and info.value.code == "queue_full"
    assert info.value.headers == {"Retry-After": "3"}
    model.release.set()
    assert [values(r) for r in await asyncio.gather(running, *queued)] == [[0], [10], [20]]
    assert 3 not in model.seen()
    await batcher.close()


async def test_deadline_expires_in_queue_with_504_and_frees_capacity(
    release_all: list[FakeModel],
) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(rows(0)))
    await model.entered.wait()
    with pytest.raises(DeadlineExceeded) as info:
        await batcher.submit(rows(1), deadline=time.monotonic() + 0.05)
    assert info.value.status == 504
    assert batcher.queue_depth == 0
    with pytest.raises(DeadlineExceeded):  # already past: refused without queueing
        await batcher.submit(rows(2), deadline=time.monotonic() - 1)
    model.release.set()
    assert values(await running) == [0]
    assert values(await batcher.submit(rows(3))) == [30]
    assert model.seen() == [0, 3]  # the expired inputs never reached the model
    await batcher.close()


async def test_cancelled_caller_inside_a_batch_does_not_hurt_the_others(
    release_all: list[FakeModel],
) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=3, max_queue_delay_s=0)
    a, b, c = (asyncio.create_task(batcher.submit(rows(i))) for i in (1, 2, 3))
    await model.entered.wait()
    assert model.batches == [[1, 2, 3]]  # all three are in the running batch
    b.cancel()  # e.g. the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await b
    model.release.set()
    ra, rc = await asyncio.wait_for(asyncio.gather(a, c), 5)
    assert values(ra) == [10] and values(rc) == [30]
    assert values(await batcher.submit(rows(4))) == [40]  # the batcher still works
    await batcher.close()


async def test_cancelled_while_queued_never_reaches_the_model(
    release_all: list[FakeModel],
) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(rows(0)))
    await model.entered.wait()
    queued = asyncio.create_task(batcher.submit(rows(1)))
    await until(lambda: batcher.queue_depth == 1, "queued")
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert batcher.queue_depth == 0
    model.release.set()
    await running
    assert values(await batcher.submit(rows(2))) == [20]
    assert model.seen() == [0, 2]
    await batcher.close()


async def test_model_exception_fails_only_its_batch(release_all: list[FakeModel]) -> None:
    model = FakeModel(hold=True, fail_if=2.0)
    release_all.append(model)
    batcher = make(model, max_batch_size=2, max_queue_delay_s=0)
    bad = [asyncio.create_task(batcher.submit(rows(i))) for i in (1, 2)]
    await model.entered.wait()
    good = asyncio.create_task(batcher.submit(rows(3)))
    model.release.set()
    outcomes = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(o, InferenceFailed) and o.status == 500 for o in outcomes)
    assert "model exploded" in str(outcomes[0])
    assert values(await good) == [30]
    await batcher.close()


async def test_model_breaking_the_list_contract_fails_loudly() -> None:
    model = FakeModel()
    model.short = True
    batcher = make(model, max_batch_size=2, max_queue_delay_s=0)
    with pytest.raises(InferenceFailed, match="returned 0 rows for a batch of 1"):
        await batcher.submit(rows(1))
    await batcher.close()


async def test_shutdown_answers_running_rejects_queued(release_all: list[FakeModel]) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(rows(0)))
    await model.entered.wait()
    queued = asyncio.create_task(batcher.submit(rows(1)))
    await until(lambda: batcher.queue_depth == 1, "queued")
    closing = asyncio.create_task(batcher.close(grace_s=10))
    with pytest.raises(Unavailable, match="shut down"):
        await queued
    model.release.set()
    assert values(await running) == [0]
    await asyncio.wait_for(closing, 5)
    with pytest.raises(Unavailable):
        await batcher.submit(rows(2))
    assert model.seen() == [0]


async def test_shutdown_with_a_stuck_batch_leaves_nobody_hanging(
    release_all: list[FakeModel],
) -> None:
    model = FakeModel(hold=True)
    release_all.append(model)
    batcher = make(model, max_batch_size=1)
    running = asyncio.create_task(batcher.submit(rows(0)))
    await model.entered.wait()
    await asyncio.wait_for(batcher.close(grace_s=0.05), 5)
    with pytest.raises(Unavailable, match="during inference"):
        await asyncio.wait_for(running, 5)


async def test_partial_batch_waits_only_while_more_requests_are_arriving() -> None:
    model = FakeModel()
    arriving = [0]
    batcher = make(model, max_batch_size=8, max_queue_delay_s=30.0, arrivals=lambda: arriving[0])
    # Nobody else is on the way: a lone request must not wait 30 s for company.
    assert values(await asyncio.wait_for(batcher.submit(rows(1)), 5)) == [10]
    arriving[0] = 1  # another request is still being decoded: worth waiting for it
    first = asyncio.create_task(batcher.submit(rows(2)))
    await until(lambda: batcher.queue_depth == 0, "first request taken into a batch")
    assert len(model.batches) == 1  # ...but it has not run yet, it waits
    arriving[0] = 0
    second = await asyncio.wait_for(batcher.submit(rows(3)), 5)
    assert values(await first) == [20] and values(second) == [30]
    assert model.batches == [[1], [2, 3]]
    await batcher.close()


async def test_batches_keep_running_while_the_event_loop_is_busy() -> None:
    # Under overload the loop comes back to any one callback late; the inference thread must
    # not wait for it between batches, or throughput falls to one batch per loop round.
    model = FakeModel()
    batcher = make(model, max_batch_size=1, max_queue_delay_s=0)
    tasks = [asyncio.create_task(batcher.submit(rows(i))) for i in range(4)]
    await until(lambda: batcher.queue_depth == 4, "all four queued")
    deadline = time.monotonic() + 5
    while len(model.batches) < 4 and time.monotonic() < deadline:
        time.sleep(0.001)  # the loop is blocked here: no callback of the batcher can run
    assert model.batches == [[0], [1], [2], [3]]
    assert [values(await t) for t in tasks] == [[0], [10], [20], [30]]
    await batcher.close()


async def test_inline_runs_a_lone_request_on_the_loop_and_batches_the_rest() -> None:
    threads: list[int] = []

    def model(x: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return x * 10

    others = [1]  # requests the HTTP server holds, the caller's included
    batcher = DynamicBatcher(
        model, max_batch_size=4, max_queue_delay_s=0, inline=True, in_progress=lambda: others[0]
    )
    batcher.start()
    loop_thread = threading.get_ident()
    lone = await batcher.submit(rows(1))
    assert values(lone) == [10] and lone.queue_s == 0.0 and threads == [loop_thread]
    others[0] = 3  # other requests are on their way: this one goes to the inference thread
    assert values(await batcher.submit(rows(2))) == [20]
    assert threads[-1] != loop_thread
    others[0] = 0  # not known (no stamping protocol): batched, to be safe
    assert values(await batcher.submit(rows(3))) == [30]
    assert threads[-1] != loop_thread
    await batcher.close()


async def test_inline_failures_keep_the_batch_contract() -> None:
    def short(x: np.ndarray) -> np.ndarray:
        return x[:-1]

    batcher = DynamicBatcher(short, inline=True)
    batcher.start()
    with pytest.raises(InferenceFailed, match="returned 0 rows"):
        await batcher.submit(rows(1))
    await batcher.close()
