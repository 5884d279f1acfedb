"""Several worker processes seen whole by one scrape: prometheus-client's multiprocess mode.

With ``--workers N`` every uvicorn worker has its own ``ServiceMetrics``, and a scrape reaches
whichever worker accepts it. So each worker writes its values to memory-mapped files in one folder
(``PROMETHEUS_MULTIPROC_DIR``, one file per process and kind), and ``/metrics`` merges the files
of all of them: counters and histograms are summed, gauges combined by their ``multiprocess_mode``.

prometheus-client chooses in-memory or file-backed values once, when it is first imported, from
that environment variable; ``python -m service`` sets it before uvicorn starts the workers, so that
one worker (or an app built in a test) keeps plain in-memory values and no files.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"
TEMP_PREFIX = "rocketserve-metrics-"


def multiprocess_dir() -> Path | None:
    """The folder this process's metric values live in, or None when they live in its memory."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    path = os.environ.get(ENV)
    if not path:
        raise RuntimeError(f"prometheus-client writes metric files, but {ENV} is no longer set")
    return Path(path)


def share_metrics_across_workers(workers: int) -> Path | None:
    """Before uvicorn starts: the folder every worker of this run writes its metrics to.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used as given (its ``*.db`` files, left by an
    earlier run, are deleted first); otherwise, with more than one worker, a fresh folder under
    the temporary directory, removed when this process exits. One worker: None, nothing changes.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path
    if workers <= 1:
        return None
    remove_abandoned_folders(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, path, True)
    os.environ[ENV] = str(path)  # inherited by the worker processes uvicorn spawns
    return path


def remove_abandoned_folders(tmp: Path, prefix: str = TEMP_PREFIX) -> None:
    """Folders ``<prefix><pid>-*`` of earlier runs whose process is gone (killed before it
    could remove them)."""
    for folder in tmp.glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if pid.isdecimal() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        # /proc/<pid>/stat: "pid (comm) state ...": comm may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def forget_dead_workers(path: Path) -> list[int]:
    """Drop the live gauges of workers that died (what ``multiprocess.mark_process_dead`` does).

    uvicorn's supervisor restarts a dead worker but tells no one; its in-flight requests, queue
    and readiness must not be counted forever. Its counters and histograms stay: what it served
    is still part of the service's totals. Returns the process ids forgotten.
    """
    dead: set[int] = set()
    for file in path.glob("gauge_live*_*.db"):
        pid = file.stem.rsplit("_", 1)[1]
        if pid.isdecimal() and not process_alive(int(pid)):
            dead.add(int(pid))
            # Two workers may answer scrapes at once and race for the same file.
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
    return sorted(dead)


class WorkersCollector:
    """Every worker's metric files merged into one exposition, dead workers' gauges dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        """Sum counters and histograms over all files; combine gauges by their mode."""
        forget_dead_workers(self.path)
        files = [str(f) for f in self.path.glob("*.db")]
        return MultiProcessCollector.merge(files, accumulate=True)
