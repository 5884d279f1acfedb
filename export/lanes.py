"""Zoo lanes: the students of a zoo trained in parallel processes, each on a share of the cores.

On a small CPU one training process with every core leaves much of it idle: the small students'
convolutions do not split well over threads (on the 2-core development machine two one-thread
processes trained 1.18-1.26x the images per second of one two-thread process, for WRN-16-1,
WRN-40-1 and MobileNetV2-0.5; ``python -m export bench`` in both layouts). After the teacher
(which every distilled student needs) the students run in the config's order, each in a child
process ``python -m export zoo --only NAME --resume``, at most ``lanes`` at a time: when one
ends, the next entry starts in its lane, so lanes stay busy however unequal the entries are
(a KD student costs several times a baseline one). Each lane appends to its own log; the parent
writes REPORT.md once all are done. A child dies with its parent (Linux), so that a restarted zoo
never finds a lane of the previous one still training an entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_S = 0.2  # how often the parent looks for a finished lane


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_lanes(
    argv: Callable[[str, int], list[str]],
    names: Sequence[str],
    lanes: int,
    log_dir: Path,
    log: Callable[[str], None] = print,
    cores: int | None = None,
) -> list[str]:
    """Run each of ``names`` as ``argv(name, threads)``, at most ``lanes`` at once, in order.

    A child gets ``cores // lanes`` torch threads (every core when it is the last one left).
    Returns one line per entry that failed (empty when all succeeded); the others still run.
    Lane ``i``'s children append their output to ``log_dir/lane-<i>.log``.
    """
    cores = cores or os.cpu_count() or 1
    share = max(1, cores // max(1, lanes))
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = list(names)
    running: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
    failed: list[str] = []
    try:
        while todo or running:
            free = [i for i in range(1, max(1, lanes) + 1) if i not in running]
            while todo and free:
                lane, name = free.pop(0), todo.pop(0)
                threads = cores if not todo and not running else share
                path = log_dir / f"lane-{lane}.log"
                with path.open("ab") as out:
                    running[lane] = (
                        name,
                        subprocess.Popen(
                            argv(name, threads),
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                        ),
                    )
                log(f"lane {lane}: {name} ({threads} torch thread(s)); log: {path}")
            time.sleep(POLL_S)
            for lane, (name, child) in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[lane]
                if code == 0:
                    log(f"lane {lane}: {name} done")
                else:
                    failed.append(f"{name} (lane {lane}) exited with status {code}")
        return failed
    finally:
        for _, child in running.values():
            if child.poll() is None:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(30)
