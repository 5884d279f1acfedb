"""The process's core budget: batches of every model together keep at most ``cores`` threads busy.

Each model version may run several batches side by side (its inference workers) so that one busy
model fills the machine; the budget is what stops many busy models from oversubscribing it. A
batch holds as many cores as its session has intra-op threads while it runs. Waiters are served
in arrival order, so a batch that needs every core is not starved by a stream of one-core
batches. Lone requests run inline on the event loop (they never wait here: a blocked loop would
stall every request) and so may exceed the budget by one short call.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class CoreBudget:
    """A fair, weighted semaphore over the cores this process may use."""

    def __init__(self, cores: int) -> None:
        if cores < 1:
            raise ValueError(f"a core budget needs at least 1 core, got {cores}")
        self.cores = cores
        self._free = cores
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()

    @property
    def free(self) -> int:
        """Cores no batch holds now."""
        with self._cond:
            return self._free

    @contextmanager
    def hold(self, cores: int) -> Iterator[None]:
        """Hold ``cores`` (at most the budget) for the duration of the block; waits its turn."""
        need = max(1, min(cores, self.cores))
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            while self._waiting[0] is not ticket or self._free < need:
                self._cond.wait()
            self._waiting.popleft()
            self._free -= need
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()
