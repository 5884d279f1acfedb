"""Pausing a training process (SIGTSTP, then SIGCONT) without counting the pause as training time.

``kill -STOP`` freezes a process, but a clock keeps running through the stop: an epoch paused for
a benchmark reports a fraction of its real img/s, and the card's wall time grows by the pause.
A training process instead takes SIGTSTP (Ctrl-Z at a terminal, ``python -m export zoo-pause`` for
a zoo's lanes): the handler stops the process itself and, once SIGCONT wakes it, adds the time it
was stopped to :data:`clock`'s paused total, which the training loop subtracts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType


class PauseAwareClock:
    """``time.perf_counter()`` less the time this process spent paused by SIGTSTP."""

    def __init__(self) -> None:
        self.paused_s = 0.0
        self.installed = False

    def __call__(self) -> float:
        return time.perf_counter() - self.paused_s

    def install(self) -> bool:
        """Take SIGTSTP from now on (once per process; only the main thread can). False where it
        cannot (not POSIX, not the main thread): SIGTSTP then stops the process as usual."""
        if self.installed:
            return True
        main = threading.current_thread() is threading.main_thread()
        if not hasattr(signal, "SIGTSTP") or not main:
            return False
        signal.signal(signal.SIGTSTP, self._pause)
        self.installed = True
        return True

    def _pause(self, signum: int, frame: FrameType | None) -> None:
        stopped_at = time.perf_counter()
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once SIGCONT resumes this process
        self.paused_s += time.perf_counter() - stopped_at


# One per process: every trainer of a process measures with it.
clock = PauseAwareClock()
