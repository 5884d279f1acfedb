"""The process's core budget: busy models together stay within the cores, fairly."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.inference.batcher import DynamicBatcher
from service.inference.cores import CoreBudget

pytestmark = pytest.mark.timeout(30)


def test_holds_never_exceed_the_budget() -> None:
    budget = CoreBudget(3)
    busy, peak, lock = [0], [0], threading.Lock()

    def work(weight: int) -> None:
        for _ in range(50):
            with budget.hold(weight):
                with lock:
                    busy[0] += weight
                    peak[0] = max(peak[0], busy[0])
                time.sleep(0.0005)
                with lock:
                    busy[0] -= weight

    threads = [threading.Thread(target=work, args=(w,)) for w in (1, 1, 2, 3, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3 and budget.free == 3  # used to the full, never beyond, all returned


def test_a_wide_batch_is_not_starved_by_narrow_ones() -> None:
    budget = CoreBudget(2, max_wait_s=10.0)
    order: list[str] = []
    first = budget.hold(1)
    first.__enter__()  # one core busy: the wide waiter cannot start yet

    def wide() -> None:
        with budget.hold(2):
            order.append("wide")

    def narrow() -> None:
        with budget.hold(1):
            order.append("narrow")

    def until_waiting(n: int) -> None:
        deadline = time.monotonic() + 5
        while budget.waiting < n:
            assert time.monotonic() < deadline, f"{budget.waiting} waiting, expected {n}"
            time.sleep(0.001)

    t_wide = threading.Thread(target=wide)
    t_wide.start()
    until_waiting(1)  # the wide one queues first ...
    t_narrow = threading.Thread(target=narrow)
    t_narrow.start()
    until_waiting(2)  # ... a narrow one arrives while a core is free, and must wait its turn
    assert order == [] and budget.free == 1
    first.__exit__(None, None, None)
    t_wide.join(5)
    t_narrow.join(5)
    assert order == ["wide", "narrow"]
    with pytest.raises(ValueError, match="at least 1 core"):
        CoreBudget(0)


class CountingModel:
    """Counts how many calls run at once across every model sharing it."""

    def __init__(self, state: dict[str, int], lock: threading.Lock) -> None:
        self.state, self.lock = state, lock

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.state["now"] += 1
            self.state["peak"] = max(self.state["peak"], self.state["now"])
        time.sleep(0.002)
        with self.lock:
            self.state["now"] -= 1
        return x * 2


async def test_busy_models_with_side_by_side_batches_share_the_budget() -> None:
    """Three models, each allowed 2 batches at once, on a 2-core budget: at most 2 calls run."""
    state, lock = {"now": 0, "peak": 0}, threading.Lock()
    budget = CoreBudget(2)
    batchers = [
        DynamicBatcher(
            CountingModel(state, lock),  # type: ignore[arg-type]
            max_batch_size=1,
            max_queue_delay_s=0.0,
            workers=2,
            cores=budget,
        )
        for _ in range(3)
    ]
    for b in batchers:
        b.start()
    x = np.ones((1, 1), dtype=np.float32)
    results = await asyncio.gather(*(b.submit(x) for b in batchers for _ in range(40)))
    assert all(r.outputs[0, 0] == 2 for r in results)
    assert state["peak"] == 2 and budget.free == 2
    for b in batchers:
        await b.close()


class Recorder:
    """Records its calls; the first one waits until released."""

    def __init__(self, name: str, calls: list[str], release: threading.Event) -> None:
        self.name, self.calls, self.release = name, calls, release

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(self.name)
        if len(self.calls) == 1:
            assert self.release.wait(10)
        return x


async def test_a_batch_beside_another_runs_on_the_one_thread_session() -> None:
    """A big model: the batch alone on the wide session, one starting beside it on the narrow."""
    calls: list[str] = []
    release = threading.Event()
    batcher = DynamicBatcher(
        Recorder("wide", calls, release),  # type: ignore[arg-type]
        max_batch_size=1,
        max_queue_delay_s=0.0,
        workers=2,
        narrow=Recorder("narrow", calls, release),  # type: ignore[arg-type]
    )
    batcher.start()
    x = np.ones((1, 1), dtype=np.float32)
    first = asyncio.ensure_future(batcher.submit(x))
    for _ in range(1000):  # until the first batch is inside the wide session
        if calls:
            break
        await asyncio.sleep(0.001)
    second = await batcher.submit(x)  # runs while the first is held: the narrow session
    release.set()
    await first
    assert calls == ["wide", "narrow"] and second.outputs.shape == (1, 1)
    third = await batcher.submit(x)  # alone again: the wide session
    assert calls[-1] == "wide" and third.outputs.shape == (1, 1)
    await batcher.close()


def test_a_hung_holder_delays_the_others_by_at_most_max_wait() -> None:
    budget = CoreBudget(2, max_wait_s=0.05)
    hung = budget.hold(2)
    hung.__enter__()  # a model call that never returns, holding every core
    t0 = time.monotonic()
    with budget.hold(1):
        waited = time.monotonic() - t0
    assert 0.04 <= waited < 1.0 and budget.overruns == 1
    assert budget.free == 0  # the overrun held nothing and gave nothing back
    hung.__exit__(None, None, None)
    with budget.hold(1):  # the queue is not left blocked by the one that gave up
        assert budget.free == 1
    assert budget.overruns == 1 and budget.free == 2
