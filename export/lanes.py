"""Zoo lanes: the students of a zoo trained in parallel processes, each on a share of the cores.

On a small CPU one training process with every core leaves much of it idle: the small students'
convolutions do not split well over threads (on the 2-core development machine two one-thread
processes trained 1.18-1.26x the images per second of one two-thread process, for WRN-16-1,
WRN-40-1 and MobileNetV2-0.5; ``python -m export bench`` in both layouts). After the teacher
(which every distilled student needs) the students are dealt round-robin, in the config's order,
to ``lanes`` child processes of ``python -m export zoo --only ... --resume``; each writes its own
log and publishes into the same repository (different model folders), and the parent writes
REPORT.md once they are done. A child dies with its parent (Linux), so that a restarted zoo never
finds a lane of the previous one still training the same entries.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def deal(names: Sequence[str], lanes: int) -> list[list[str]]:
    """Round-robin, in order: lane i gets entries i, i + lanes, ...; no empty lanes."""
    dealt = [list(names[i::lanes]) for i in range(max(1, lanes))]
    return [lane for lane in dealt if lane]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_lanes(
    argv: Callable[[list[str], int], list[str]],
    names: Sequence[str],
    lanes: int,
    log_dir: Path,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Run ``names`` in ``lanes`` children; ``argv(names, threads)`` is a child's command.

    Returns one line per lane that failed (empty when all succeeded); every lane runs to its end
    whatever the others do. Each child's output goes to ``log_dir/lane-<i>.log`` (appended).
    """
    dealt = deal(names, lanes)
    threads = max(1, (os.cpu_count() or 1) // len(dealt))
    log_dir.mkdir(parents=True, exist_ok=True)
    children: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    try:
        for i, lane in enumerate(dealt, start=1):
            path = log_dir / f"lane-{i}.log"
            with path.open("ab") as out:
                child = subprocess.Popen(
                    argv(lane, threads),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            log(f"lane {i}: {', '.join(lane)} ({threads} torch thread(s)); log: {path}")
            children.append((i, child, path))
        failed = []
        for i, child, path in children:
            code = child.wait()
            if code != 0:
                failed.append(f"lane {i} exited with status {code}; see {path}")
            else:
                log(f"lane {i}: done")
        return failed
    finally:
        for _, child, _ in children:
            if child.poll() is None:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(30)
