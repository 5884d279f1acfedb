"""Zoo lanes: entries in parallel processes, in order as far as prerequisites allow."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from export.lanes import run_lanes, running_entries


def _waits_for(marker: Path) -> str:
    """A child's code that lasts until ``marker`` exists, whatever the machine's speed."""
    return f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)"


def _touches(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _recorder(
    code: dict[str, str],
) -> tuple[list[tuple[str, int]], Callable[[str, int], list[str]]]:
    """The (name, threads) of every child started, and the argv function that records them."""
    started: list[tuple[str, int]] = []

    def argv(name: str, threads: int) -> list[str]:
        started.append((name, threads))
        return [sys.executable, "-c", code[name]]

    return started, argv


def test_a_lane_takes_the_next_entry_when_its_entry_ends(tmp_path: Path) -> None:
    """At most ``lanes`` children at once, in order; the lane that frees first runs the next;
    the last one left gets every core; a failure is reported and the others still run."""
    marker = tmp_path / "last-ran"
    code = {  # "long" lasts until "last" has run
        "long": _waits_for(marker),
        "short": "pass",
        "third": "pass",
        "fails": "raise SystemExit(3)",
        "last": _touches(marker),
    }
    started, argv = _recorder(code)

    lines: list[str] = []
    logs = tmp_path / "logs"
    failed = run_lanes(argv, list(code), 2, logs, lines.append, cores=4)
    assert failed == ["fails (lane 2) exited with status 3"]
    assert [s[0] for s in started] == list(code)
    # "long" holds lane 1 throughout: everything else ran in lane 2, one after another.
    assert lines[0].startswith("lane 1: long (2 torch thread(s))")
    assert all(line.startswith("lane 2: ") for line in lines if "long" not in line)
    assert started[-1] == ("last", 2)  # "long" still ran when it started: half the cores
    assert sorted(p.name for p in logs.iterdir()) == [
        "lane-1.log", "lane-1.threads", "lane-2.log", "lane-2.threads", "lanes.json"
    ]  # fmt: skip
    alone, lone = _recorder({"x": "pass"})
    assert run_lanes(lone, ["x"], 2, logs, cores=4) == []
    assert alone == [("x", 4)]  # a lone entry gets every core


def test_an_entry_waits_for_its_prerequisites(tmp_path: Path) -> None:
    """An entry starts only once everything it needs succeeded, and others fill the lanes
    meanwhile; one whose prerequisite failed is not run; a lone-ready entry gets every core."""
    marker = tmp_path / "free-ran"
    logs = tmp_path / "logs"
    # "free" copies what the state file says while it runs, then lets the "teacher" end.
    free = (
        "import json, time\n"
        f"state = {str(logs / 'lanes.json')!r}\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "    try:\n"
        "        lanes = json.load(open(state))['lanes']\n"
        "    except (OSError, ValueError):\n"
        "        continue\n"
        "    if '2' in lanes:\n"
        "        break\n"
        f"json.dump(lanes, open({str(tmp_path / 'seen.json')!r}, 'w'))\n" + _touches(marker)
    )
    code = {  # the "teacher" lasts until "free" has run beside it
        "teacher": _waits_for(marker),
        "student": "pass",
        "broken": "raise SystemExit(2)",
        "needs-broken": "pass",
        "free": free,
    }
    after = {"student": ["teacher"], "needs-broken": ["broken", "teacher"], "free": ["elsewhere"]}
    started, argv = _recorder(code)

    lines: list[str] = []
    failed = run_lanes(argv, list(code), 2, logs, lines.append, cores=4, after=after)
    assert failed == [
        "broken (lane 2) exited with status 2",
        "needs-broken not run: it needs broken, which failed",
    ]
    # "student" waits for the teacher, which lasts until "free" ran in the other lane after
    # "broken"; "needs-broken" never runs.
    assert [s[0] for s in started] == ["teacher", "broken", "free", "student"]
    assert lines.index("lane 1: teacher done") < next(
        i for i, line in enumerate(lines) if ": student (" in line
    )
    assert "needs-broken: not run (broken failed)" in lines
    assert started[0] == ("teacher", 2)  # others could start beside it: half the cores
    # The state file said what each lane trained, and says nothing once all are done.
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert {lane: (v["entry"], v["threads"]) for lane, v in seen.items()} == {
        "1": ("teacher", 2), "2": ("free", 2)
    }  # fmt: skip
    assert json.loads((logs / "lanes.json").read_text())["lanes"] == {}
    assert running_entries(logs) == {}

    # Only the teacher can start at first: it gets every core.
    alone, quick = _recorder(dict.fromkeys("tabxy", "pass"))
    after = {"a": ["t"], "b": ["t"]}
    assert run_lanes(quick, ["t", "a", "b"], 2, tmp_path / "logs", cores=4, after=after) == []
    assert alone == [("t", 4), ("a", 2), ("b", 2)]
    with pytest.raises(ValueError, match="wait on each other"):
        run_lanes(quick, ["x", "y"], 2, tmp_path / "logs", cores=4, after={"x": ["y"], "y": ["x"]})


def test_a_child_left_alone_gets_every_core(tmp_path: Path) -> None:
    """When its lane partner ends and nothing can start beside it, a running child that follows
    its lane's threads file is raised to every core; while the partner runs it is not."""
    seen = tmp_path / "seen"
    long = (
        "import time, torch\n"
        "from export.lanes import follow_lane_threads\n"
        "with follow_lane_threads():\n"
        "    first = torch.get_num_threads()\n"
        f"    open({str(seen)!r} + '-start', 'w').write(str(first))\n"
        "    deadline = time.monotonic() + 120\n"
        "    while torch.get_num_threads() == first and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        f"    open({str(seen)!r}, 'w').write(f'{{first}}->{{torch.get_num_threads()}}')\n"
    )
    # "short" ends only once "long" has started (and read its threads file).
    short = (
        f"import os, time\nwhile not os.path.exists({str(seen)!r} + '-start'): time.sleep(0.05)\n"
    )
    code = {"long": long, "short": short, "after": "pass"}
    lines: list[str] = []
    failed = run_lanes(
        lambda name, threads: [sys.executable, "-c", code[name]],
        list(code),
        2,
        tmp_path / "logs",
        lines.append,
        cores=2,
        after={"after": ["long"]},
    )
    assert failed == []
    assert seen.read_text() == "1->2"
    assert "lane 1: long now on 2 torch thread(s) (nothing beside it)" in lines
    assert lines.index("lane 2: short done") < lines.index(
        "lane 1: long now on 2 torch thread(s) (nothing beside it)"
    )
    assert lines[-1] == "lane 1: after done"  # a lone entry starts on every core: no raise
    assert not any("after now on" in line for line in lines)


def test_following_the_lane_threads_ends_ignoring_the_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside: the threads file is applied, and again on SIGUSR1. After: SIGUSR1 is ignored, so
    a late raise cannot kill a child that is exiting (Python resets its handlers at exit)."""
    import os
    import signal

    import torch

    from export.lanes import THREADS_FILE_ENV, follow_lane_threads

    threads_file = tmp_path / "lane-1.threads"
    threads_file.write_text("1", encoding="utf-8")
    monkeypatch.setenv(THREADS_FILE_ENV, str(threads_file))
    before_threads, before_handler = torch.get_num_threads(), signal.getsignal(signal.SIGUSR1)
    try:
        with follow_lane_threads():
            assert torch.get_num_threads() == 1
            threads_file.write_text("2", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGUSR1)
            assert torch.get_num_threads() == 2
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, before_handler)
        torch.set_num_threads(before_threads)


def test_the_state_file_is_read_as_far_as_it_makes_sense(tmp_path: Path) -> None:
    """A torn, absent or partly malformed lanes.json reads as the lanes that make sense in it:
    a live pid counts as a running entry, a dead one or a malformed lane does not, and only a
    process that runs ``export zoo`` is a lane to signal (this test process is not one)."""
    from export.lanes import STATE_FILE, lane_processes

    assert running_entries(tmp_path) == {} and lane_processes(tmp_path) == (None, {})
    (tmp_path / STATE_FILE).write_text('{"lanes": {"1": ', encoding="utf-8")  # torn
    assert running_entries(tmp_path) == {} and lane_processes(tmp_path) == (None, {})

    dead = 2**22 + 12345  # above the default pid_max: no such process
    lanes = {
        "1": {"entry": "teacher", "pid": os.getpid(), "threads": 2},
        "2": {"entry": "gone", "pid": dead, "threads": 1},
        "3": "not a lane",
        "x": {"entry": "bad lane number", "pid": os.getpid()},
        "4": {"pid": os.getpid()},
    }
    state = {"parent": os.getpid(), "lanes": lanes}
    (tmp_path / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    assert running_entries(tmp_path) == {"teacher": 1}
    assert lane_processes(tmp_path) == (None, {})
