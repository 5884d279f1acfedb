"""Zoo lanes: the entries of a zoo trained in parallel processes, each on a share of the cores.

On a small CPU one training process with every core leaves much of it idle: the small students'
convolutions do not split well over threads (on the 2-core development machine two one-thread
processes trained 1.18-1.26x the images per second of one two-thread process, for WRN-16-1,
WRN-40-1 and MobileNetV2-0.5; ``python -m export bench`` in both layouts). Each entry runs in a
child process ``python -m export zoo --only NAME --resume``, at most ``lanes`` at a time, in the
config's order as far as prerequisites allow (export/zoo.py ``prerequisites``: a distilled
student waits for the teacher, a conditional second seed for the entries it compares, every
student for the teacher with ``teacher_first``). When a lane's entry ends, the lane takes the next
entry that can start, so lanes stay busy however unequal the entries are (a KD student costs
several times a baseline one); an entry left alone is raised to every core. Each lane appends to
its own log; the parent writes REPORT.md once all are done. A child dies with its parent
(Linux), so that a restarted zoo never finds a lane of the previous one still training an entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
POLL_S = 0.2  # how often the parent looks for a finished lane


# A lane's child reads its torch thread count from this file, at start and on SIGUSR1.
THREADS_FILE_ENV = "ROCKETSERVE_LANE_THREADS_FILE"


def _child_setup() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # Until the child installs its handler (follow_lane_threads), a SIGUSR1 must not kill it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


# What each lane trains now, rewritten whenever that changes (zoo-status reads it).
STATE_FILE = "lanes.json"


def _write_state(log_dir: Path, running: dict[int, tuple[str, int, int]]) -> None:
    """``running``: lane -> (entry, pid, threads); written atomically."""
    state = {
        "parent": os.getpid(),
        "lanes": {
            str(lane): {"entry": name, "pid": pid, "threads": threads}
            for lane, (name, pid, threads) in sorted(running.items())
        },
    }
    tmp = log_dir / f"{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(log_dir / STATE_FILE)


def _alive(pid: Any) -> bool:
    """True when ``pid`` names a live process this user may signal."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _read_state(log_dir: Path) -> tuple[Any, list[tuple[int, str, Any]]]:
    """The state file's recorded parent pid and its lanes as (lane, entry, pid), unchecked; an
    absent or unreadable file, or a malformed lane in it, reads as nothing."""
    try:
        state = json.loads((log_dir / STATE_FILE).read_text(encoding="utf-8"))
        lanes = dict(state["lanes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, []
    rows = []
    for lane, info in lanes.items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            rows.append((int(lane), str(info["entry"]), info["pid"]))
    return state.get("parent"), rows


def running_entries(log_dir: Path) -> dict[str, int]:
    """The entries that lanes train right now: name -> lane, from the state file, keeping only
    children that are still alive (a stopped zoo leaves a stale file behind)."""
    return {entry: lane for lane, entry, pid in _read_state(log_dir)[1] if _alive(pid)}


def _is_zoo(pid: Any) -> bool:
    """True when ``pid`` is alive and runs ``... export zoo ...`` (the lanes' parent or a lane's
    child), not some other process that took the pid of a zoo that has stopped since."""
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"export" and b == b"zoo" for a, b in itertools.pairwise(args))


def lane_processes(log_dir: Path) -> tuple[int | None, dict[str, int]]:
    """The live lanes parent (None if it is gone or unrecorded) and each live lane's entry ->
    pid, from the state file; only processes that run ``export zoo`` (they are signalled)."""
    parent, rows = _read_state(log_dir)
    children = {entry: int(pid) for _, entry, pid in rows if _is_zoo(pid)}
    return (int(parent) if parent is not None and _is_zoo(parent) else None), children


def process_state(pid: int) -> str:
    """The process's state letter from /proc/<pid>/stat (``T`` stopped, ``Z`` exited but not
    reaped, ...), or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def is_stopped(pid: int) -> bool:
    """True when the process is stopped (SIGSTOP, SIGTSTP)."""
    return process_state(pid) in ("T", "t")


def paused_entries(log_dir: Path) -> set[str]:
    """The entries whose lane's child is stopped now (`zoo-pause`, or SIGSTOP)."""
    return {name for name, pid in lane_processes(log_dir)[1].items() if is_stopped(pid)}


def pause_lanes(log_dir: Path, wait_s: float = 60.0) -> dict[str, str]:
    """Pause a running zoo: SIGTSTP to each lane's child, which stops itself and leaves the pause
    out of its training time (export/training/pause.py), and SIGSTOP to the parent so that no
    new entry starts meanwhile. A child still running after ``wait_s`` (one that started before
    the trainer took SIGTSTP) gets SIGSTOP: paused all the same, the pause counted as training.
    Returns entry -> how it was paused."""
    parent, children = lane_processes(log_dir)
    if parent is not None:
        with contextlib.suppress(OSError):
            os.kill(parent, signal.SIGSTOP)
    for pid in children.values():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTSTP)

    def settled(pid: int) -> bool:  # stopped, or ended meanwhile (its parent reaps it later)
        return process_state(pid) in ("T", "t", "Z", "X", "")

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(settled(p) for p in children.values()):
        time.sleep(0.2)
    how = {}
    for name, pid in children.items():
        if is_stopped(pid):
            how[name] = f"paused (pid {pid})"
        elif settled(pid):
            how[name] = f"ended before it could pause (pid {pid})"
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
            how[name] = f"stopped with SIGSTOP after {wait_s:g} s (pid {pid}): the pause counts"
    return how


def continue_lanes(log_dir: Path) -> dict[str, str]:
    """Continue a paused zoo: SIGCONT to each lane's child and to the parent."""
    parent, children = lane_processes(log_dir)
    for pid in [*children.values(), *([parent] if parent is not None else [])]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    return {name: f"continued (pid {pid})" for name, pid in children.items()}


@contextlib.contextmanager
def follow_lane_threads() -> Iterator[None]:
    """In a lane's child: take the torch thread count the parent writes to the lane's threads
    file, now and whenever it sends SIGUSR1 (when nothing else can run beside this entry, the
    parent gives it every core). On leaving, SIGUSR1 is ignored again: at exit Python resets
    its handlers to the default, which would let a late signal kill the finished child. A no-op
    outside a lane."""
    path = os.environ.get(THREADS_FILE_ENV)
    if not path or not hasattr(signal, "SIGUSR1"):
        yield
        return
    import torch

    def apply(*_: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            wanted = int(Path(path).read_text(encoding="utf-8"))
            if wanted > 0 and wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)

    # The parent writes the file before it signals, so reading it once after installing the
    # handler catches a signal that came before.
    signal.signal(signal.SIGUSR1, apply)
    try:
        apply()
        yield
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run_lanes(
    argv: Callable[[str, int], list[str]],
    names: Sequence[str],
    lanes: int,
    log_dir: Path,
    log: Callable[[str], None] = print,
    cores: int | None = None,
    after: Mapping[str, Collection[str]] | None = None,
) -> list[str]:
    """Run each of ``names`` as ``argv(name, threads)``, at most ``lanes`` at once, in order.

    ``after[name]`` lists the entries ``name`` must wait for: a free lane takes the first entry
    whose prerequisites have all succeeded (names outside ``names`` count as done); an entry whose
    prerequisite failed is reported as failed without running. A child gets ``cores // lanes``
    torch threads, or every core when nothing else runs or could start beside it.
    Returns one line per entry that failed (empty when all succeeded); the others still run.
    Lane ``i``'s children append their output to ``log_dir/lane-<i>.log``; ``log_dir/lanes.json``
    says which entry each lane trains now (:func:`running_entries`).
    """
    cores = cores or os.cpu_count() or 1
    share = max(1, cores // max(1, lanes))
    waits = {n: set((after or {}).get(n, ())) & set(names) for n in names}
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = list(names)
    running: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
    threads_of: dict[int, int] = {}
    done: set[str] = set()
    failed: list[str] = []
    failed_names: set[str] = set()

    def ready() -> list[str]:
        return [n for n in todo if waits[n] <= done]

    written: dict[int, tuple[str, int, int]] | None = None

    def publish() -> None:
        nonlocal written
        now = {lane: (name, child.pid, threads_of[lane]) for lane, (name, child) in running.items()}
        if now != written:
            with contextlib.suppress(OSError):  # a read-only work dir: no status, same training
                _write_state(log_dir, now)
            written = now

    try:
        while todo or running:
            publish()
            for name in [n for n in todo if waits[n] & failed_names]:
                todo.remove(name)
                failed_names.add(name)
                blocked = ", ".join(sorted(waits[name] & failed_names))
                failed.append(f"{name} not run: it needs {blocked}, which failed")
                log(f"{name}: not run ({blocked} failed)")
            free = [i for i in range(1, max(1, lanes) + 1) if i not in running]
            while free and ready():
                name = ready()[0]
                lane = free.pop(0)
                todo.remove(name)
                threads = cores if not running and not ready() else share
                path = log_dir / f"lane-{lane}.log"
                threads_file = log_dir / f"lane-{lane}.threads"
                threads_file.write_text(str(threads), encoding="utf-8")
                env = {**os.environ, THREADS_FILE_ENV: str(threads_file)}
                with path.open("ab") as out:
                    running[lane] = (
                        name,
                        subprocess.Popen(
                            argv(name, threads),
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            env=env,
                            preexec_fn=_child_setup if sys.platform == "linux" else None,
                        ),
                    )
                threads_of[lane] = threads
                log(f"lane {lane}: {name} ({threads} torch thread(s)); log: {path}")
            if not running and todo and not ready():
                raise ValueError(f"entries wait on each other: {', '.join(todo)}")
            time.sleep(POLL_S)
            for lane, (name, child) in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[lane]
                if code == 0:
                    done.add(name)
                    log(f"lane {lane}: {name} done")
                else:
                    failed_names.add(name)
                    failed.append(f"{name} (lane {lane}) exited with status {code}")
            if len(running) == 1 and not ready():
                ((lane, (name, child)),) = running.items()
                if threads_of[lane] < cores and hasattr(signal, "SIGUSR1"):
                    (log_dir / f"lane-{lane}.threads").write_text(str(cores), encoding="utf-8")
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGUSR1)
                    threads_of[lane] = cores
                    log(f"lane {lane}: {name} now on {cores} torch thread(s) (nothing beside it)")
        return failed
    finally:
        for _, child in running.values():
            if child.poll() is None:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(30)
        running.clear()
        publish()
