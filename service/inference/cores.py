"""The process's core budget: batches of every model together keep at most ``cores`` threads busy.

Each model version may run several batches side by side (its inference workers) so that one busy
model fills the machine; the budget is what stops many busy models from oversubscribing it. A
batch holds as many cores as its session has intra-op threads while it runs. Waiters are served
in arrival order, so a batch that needs every core is not starved by a stream of one-core
batches. Lone requests run inline on the event loop (they never wait here: a blocked loop would
stall every request) and so may exceed the budget by one short call.

The budget is a bound on oversubscription, never a reason to stall: a batch that has waited
``max_wait_s`` runs anyway (counted in ``overruns``), so a model whose calls hang (or a reference
model kept busy by agreement sampling) delays the other models' batches by at most that much.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class CoreBudget:
    """A fair, weighted semaphore over the cores this process may use."""

    MAX_WAIT_S = 0.05

    def __init__(self, cores: int, max_wait_s: float = MAX_WAIT_S) -> None:
        if cores < 1:
            raise ValueError(f"a core budget needs at least 1 core, got {cores}")
        self.cores = cores
        self.max_wait_s = max_wait_s
        self.overruns = 0  # batches that ran without their cores after waiting max_wait_s
        self._free = cores
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()

    @property
    def free(self) -> int:
        """Cores no batch holds now."""
        with self._cond:
            return self._free

    @property
    def waiting(self) -> int:
        """Batches waiting for their cores now."""
        with self._cond:
            return len(self._waiting)

    @contextmanager
    def hold(self, cores: int) -> Iterator[None]:
        """Hold ``cores`` (at most the budget) for the duration of the block; waits its turn."""
        need = max(1, min(cores, self.cores))
        ticket = object()
        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._free < need:
                left = deadline - time.monotonic()
                if left <= 0:  # waited long enough: run without the cores, do not stall
                    self._waiting.remove(ticket)
                    self.overruns += 1
                    need = 0
                    break
                self._cond.wait(left)
            else:
                self._waiting.popleft()
            self._free -= need
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()
