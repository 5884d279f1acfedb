"""Pausing training with SIGTSTP: the pause is left out of training time; zoo-pause/continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export.lanes import STATE_FILE, continue_lanes, pause_lanes
from export.training import pause, run_training
from export.training.logs import read_log
from tests.support.cli import ROOT, run_module

# A process that reports ready, then blocks reading a line; with "pause" it first takes SIGTSTP
# as training does, with "ignore" it ignores SIGTSTP (a trainer that predates the handler).
CHILD = """
import signal, sys, time
mode = sys.argv[1]
if mode == "pause":
    from export.training import pause
    assert pause.clock.install()
elif mode == "ignore":
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)
wall0 = time.perf_counter()
clock0 = pause.clock() if mode == "pause" else wall0
print("ready", flush=True)
sys.stdin.readline()
if mode == "pause":
    print(time.perf_counter() - wall0, pause.clock() - clock0, pause.clock.paused_s, flush=True)
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _wait_state(pid: int, states: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _state(pid) not in states:
        assert time.monotonic() < deadline, f"pid {pid} is {_state(pid)!r}, not one of {states!r}"
        time.sleep(0.05)


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Start CHILD processes in a mode; each is ready when returned, all killed at the end."""
    children: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, "export", "zoo"],  # as a zoo's argv says
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_a_pause_by_sigtstp_is_not_training_time(spawn: Any) -> None:
    child = spawn("pause")
    child.send_signal(signal.SIGTSTP)
    _wait_state(child.pid, "T")  # the handler stopped the process itself
    time.sleep(1.5)
    child.send_signal(signal.SIGCONT)
    out, _ = child.communicate("go\n", timeout=30)
    wall, clock, paused = (float(v) for v in out.split())
    assert paused >= 1.4
    assert wall - clock == pytest.approx(paused, abs=0.01)
    assert clock < wall - 1.4


def test_the_training_loop_measures_epochs_with_the_pause_aware_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class TenSecondsACall:
        """Each reading is 10 s after the previous one: the epoch's time is the loop's reads."""

        def __init__(self) -> None:
            self.now, self.installs = 0.0, 0

        def __call__(self) -> float:
            self.now += 10.0
            return self.now

        def install(self) -> bool:
            self.installs += 1
            return True

    fake = TenSecondsACall()
    monkeypatch.setattr(pause, "clock", fake)
    cfg = {"dataset": "digits", "student": "wrn-10-1", "epochs": 1, "max_train_images": 200}
    result = run_training({**cfg, "progress": False, "threads": 1, "out_dir": str(tmp_path)})
    (epoch,) = [r for r in read_log(tmp_path) if r.get("event") == "epoch"]
    assert fake.installs == 1 and epoch["steps"] == 4
    # A read at the start, one after each of the 4 steps, one at the end: 5 intervals of 10 s.
    assert epoch["epoch_time_s"] == 50.0 and epoch["img_per_s"] == round(200 / 50.0, 1)
    assert result.wall_time_s == 50.0


def _lanes_state(work: Path, parent: int, lanes: dict[str, int]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    state = {
        "parent": parent,
        "lanes": {str(i): {"entry": name, "pid": pid, "threads": 1}
                  for i, (name, pid) in enumerate(lanes.items(), start=1)},
    }  # fmt: skip
    (work / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_zoo_pause_stops_every_lane_and_the_parent_and_continue_resumes_them(
    tmp_path: Path, spawn: Any
) -> None:
    parent, trainer, old, ended = spawn("plain"), spawn("pause"), spawn("ignore"), spawn("plain")
    assert ended.stdin is not None
    ended.stdin.write("go\n")
    ended.stdin.flush()
    _wait_state(ended.pid, "Z")  # exited, not reaped yet: its lane is about to end
    work = tmp_path / ".work"
    lanes = {"kd-wrn-16-1": trainer.pid, "baseline-wrn-16-1": old.pid, "mimic": ended.pid}
    _lanes_state(work, parent.pid, lanes)
    how = pause_lanes(work, wait_s=1.0)
    assert how["kd-wrn-16-1"] == f"paused (pid {trainer.pid})"
    assert "mimic" not in how  # its lane has ended: nothing to pause
    assert (
        "stopped with SIGSTOP" in how["baseline-wrn-16-1"] and "counts" in how["baseline-wrn-16-1"]
    )
    for pid in (parent.pid, trainer.pid, old.pid):
        _wait_state(pid, "T")
    # Pausing twice, then continuing once, leaves nothing paused (SIGCONT drops a pending SIGTSTP).
    assert pause_lanes(work, wait_s=1.0)["kd-wrn-16-1"] == f"paused (pid {trainer.pid})"
    assert set(continue_lanes(work)) == {"kd-wrn-16-1", "baseline-wrn-16-1"}
    for pid in (parent.pid, trainer.pid, old.pid):
        _wait_state(pid, "SR")
    time.sleep(0.5)
    assert _state(trainer.pid) in "SR"
    out, _ = trainer.communicate("go\n", timeout=30)
    assert float(out.split()[2]) > 0.0  # the trainer counted its pause


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_a_pid_that_is_no_longer_the_zoos_is_never_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A zoo stopped long ago left lanes.json behind; its pids now belong to other processes.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    signalled: list[tuple[int, int]] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        signalled.append((pid, sig))
        real_kill(pid, sig)

    try:
        work = tmp_path / ".work"
        _lanes_state(work, other.pid, {"kd-wrn-16-1": other.pid})
        monkeypatch.setattr(os, "kill", kill)
        assert pause_lanes(work, wait_s=1.0) == {}
        assert continue_lanes(work) == {}
        monkeypatch.undo()
        assert [pid for pid, sig in signalled if sig != 0] == []  # signal 0 only asks
        assert _state(other.pid) not in "Tt"  # not stopped (D, a moment on disk, is fine)
    finally:
        other.kill()
        other.wait(timeout=30)


def test_zoo_pause_explains_what_is_missing(tmp_path: Path, spawn: Any) -> None:
    proc = run_module("export", "zoo-pause", "--out", str(tmp_path / "zoo"))
    assert proc.returncode == 1 and "no zoo work folder" in proc.stderr
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    _lanes_state(tmp_path / "zoo" / ".work", os.getpid() + 10**7, {"a": int(gone.stdout)})
    for command in ("zoo-pause", "zoo-continue"):
        proc = run_module("export", command, "--out", str(tmp_path / "zoo"))
        assert proc.returncode == 1 and "no lane of a zoo is running" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
