"""zoo-status reads each entry's state, epochs, top-1 and time left from the zoo's work folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from export.__main__ import main
from export.lanes import is_stopped
from export.zoo_config import config_path, load_zoo_config
from export.zoo_plan_record import PlannedCost, PlanRecord, write_plan_record
from export.zoo_status import (
    EntryStatus,
    elapsed_training_hours,
    format_status,
    zoo_status,
    zoo_time_left,
)


def _log(folder: Path, *records: dict[str, object], torn: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + (['{"event": "epo'] if torn else [])
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _start(epochs: int, event: str = "start") -> dict[str, object]:
    return {"event": event, "config": {"epochs": epochs}, "train_images": 50_000}


def _epoch(n: int, top1: float, rate: float) -> dict[str, object]:
    return {"event": "epoch", "epoch": n, "test_top1": top1, "img_per_s": rate}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    work = tmp_path / "zoo" / ".work"
    # The teacher: 4 of 40 epochs, resumed once, the last line cut short by a kill.
    _log(
        work / "teacher-wrn-40-2",
        _start(40),
        _epoch(1, 0.35, 20.0),
        _epoch(2, 0.49, 30.0),
        _start(40, "resume"),
        _epoch(3, 0.64, 30.0),
        _epoch(4, 0.69, 30.0),
        torn=True,
    )
    # FitNets, stopped part way: its 6 hint epochs (stage 1, a sub-run) done, then 2 of stage 2,
    # which its own log numbers from 1; its second seed stopped in stage 1.
    _log(work / "fitnet-wrn-16-1" / "fitnet-hints", _start(6), _epoch(6, 0.1, 400.0))
    _log(work / "fitnet-wrn-16-1", _start(30), _epoch(2, 0.4, 300.0))
    _log(work / "fitnet-wrn-16-1-seed1" / "fitnet-hints", _start(6), _epoch(3, 0.1, 400.0))
    baseline = work / "baseline-wrn-16-1"
    _log(baseline, _start(30), _epoch(30, 0.9, 300.0))
    result = {"fingerprint": {}, "result": {"completed": True}}
    (baseline / "result.json").write_text(json.dumps(result), encoding="utf-8")
    # The teacher trains in lane 1 now (this process stands in for its child); rocket has just
    # started in lane 2 (no log yet); baseline's child is gone (a stopped zoo's stale entry).
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    # MobileNetV2's child is paused (zoo-pause): a stopped process stands in for it.
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)", "export", "zoo"]
    stopped = subprocess.Popen(sleeper)
    stopped.send_signal(signal.SIGSTOP)
    while not is_stopped(stopped.pid):
        time.sleep(0.05)
    lanes = {
        "1": {"entry": "teacher-wrn-40-2", "pid": os.getpid(), "threads": 2},
        "2": {"entry": "rocket-wrn-16-1", "pid": os.getpid(), "threads": 1},
        "3": {"entry": "mimic-wrn-16-1", "pid": int(gone.stdout), "threads": 1},
        "4": {"entry": "baseline-mobilenetv2-0.5", "pid": stopped.pid, "threads": 1},
    }
    (work / "lanes.json").write_text(json.dumps({"lanes": lanes}), encoding="utf-8")
    (work / "lane-2.log").write_text(
        "[cifar10-rocket-wrn-16-1-seed1] skipped: rocket-wrn-16-1 vs baseline-wrn-16-1: "
        "+2.00 points (2 s.e. = 0.88), beyond noise: no second seed needed\n",
        encoding="utf-8",
    )
    yield work
    stopped.kill()
    stopped.wait(timeout=30)


def test_each_entry_reads_as_its_work_folder_says(work: Path) -> None:
    config = load_zoo_config(config_path("cifar10"))
    status = {s.name: s for s in zoo_status(config, work)}
    teacher = status["teacher-wrn-40-2"]
    assert (teacher.state, teacher.lane, teacher.epochs_done) == ("training", 1, 4)
    assert teacher.epochs == 40.0
    assert teacher.test_top1 == 0.69
    assert teacher.img_per_s == pytest.approx(30.0)  # the last three epochs
    assert teacher.hours_left == pytest.approx(36 * 50_000 / 30.0 / 3600)
    assert status["baseline-wrn-16-1"].state == "done"
    assert status["baseline-wrn-16-1"].hours_left is None
    assert status["rocket-wrn-16-1-seed1"].state == "skipped"
    assert (status["rocket-wrn-16-1"].state, status["rocket-wrn-16-1"].lane) == ("training", 2)
    assert status["mimic-wrn-16-1"].state == "not started"  # its lane's child is gone
    mobilenet = status["baseline-mobilenetv2-0.5"]
    assert (mobilenet.state, mobilenet.lane) == ("paused", 4)
    fitnet = status["fitnet-wrn-16-1"]
    assert (fitnet.state, fitnet.lane, fitnet.epochs_done) == ("started", None, 8)
    assert fitnet.epochs == 30
    assert fitnet.hours_left == pytest.approx(22 * 50_000 / 300.0 / 3600)
    in_hints = status["fitnet-wrn-16-1-seed1"]
    assert (in_hints.state, in_hints.epochs_done, in_hints.epochs) == ("started", 3, 30)
    assert in_hints.hours_left == pytest.approx(27 * 50_000 / 400.0 / 3600)
    kd = status["kd-wrn-16-1"]
    assert (kd.state, kd.waits_for) == ("not started", ("teacher-wrn-40-2",))
    # A second seed waits only for the entries not done yet.
    assert "baseline-wrn-16-1" not in status["baseline-wrn-16-1-seed1"].waits_for
    assert "kd-wrn-16-1" in status["baseline-wrn-16-1-seed1"].waits_for


def test_the_command_prints_the_table(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo-status", "--dataset", "cifar10", "--out", str(work.parent)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("teacher-wrn-40-2"))
    assert row.split()[1:7] == ["training", "(1)", "4/40", "69.00", "30", "16:40"]
    assert "1 done, 2 training, 1 paused, 2 started" in out and "1 skipped" in out
    assert main(["zoo-status", "--dataset", "cifar10", "--out", str(work.parent / "nope")]) == 1
    assert "no zoo work folder" in capsys.readouterr().err


def test_a_reader_that_quits_early_stops_the_command_quietly(work: Path) -> None:
    """`zoo-status | head`: the pipe's read end is closed before the table is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "export", "zoo-status", "--dataset", "cifar10",
             "--out", str(work.parent)],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # neither "error: [Errno 32] Broken pipe" nor a traceback
    assert proc.returncode == 141  # as a shell reports a tool killed by SIGPIPE


def test_elapsed_training_time_counts_entries_side_by_side_once(tmp_path: Path) -> None:
    """The union of every logged epoch, sub-runs (a FitNets hint stage) included: the teacher
    alone for 2 h, then two students in lanes overlapping for 30 min; a record without times
    (or a torn one) adds nothing."""
    t0 = 1_800_000_000.0

    def epoch(end: float, seconds: float) -> dict[str, object]:
        return {"event": "epoch", "epoch": 1, "time": t0 + end, "epoch_time_s": seconds}

    _log(tmp_path / "teacher", _start(2), epoch(3600, 3600), epoch(7200, 3600))
    _log(tmp_path / "kd", _start(1), epoch(9000, 1800), {"event": "epoch"}, torn=True)
    _log(tmp_path / "fitnet" / "fitnet-hints", _start(1), epoch(10_800, 1800))
    assert elapsed_training_hours(tmp_path) == pytest.approx(3.0)
    assert "elapsed training time so far: 3:00" in format_status([], tmp_path)
    assert elapsed_training_hours(tmp_path / "none") == 0.0
    assert "elapsed training time" not in format_status([], tmp_path / "none")


PLAN = PlanRecord(
    measured_at=1_800_000_000.0,
    machine="cpu (test)",
    cores=2,
    entries={
        "teacher": PlannedCost(40, 20.0),
        "kd": PlannedCost(30, 6.0, images=72_000),  # 100 img/s of one core
        "rocket": PlannedCost(30, 9.0),
        "kd-seed1": PlannedCost(30, 6.0, conditional=True),
        "baseline-seed1": PlannedCost(30, 3.0, conditional=True),
        "mimic-seed1": PlannedCost(30, 3.0, conditional=True),
        "capped": PlannedCost(30, 3.0),
    },
)
STATUSES = [
    EntryStatus("teacher", "done", 40, 40.0),
    EntryStatus("kd", "training", 10, 30.0, img_per_s=150.0, lane=1),
    EntryStatus("rocket", "not started"),
    EntryStatus("kd-seed1", "not started"),  # a second seed: only if due
    EntryStatus("baseline-seed1", "skipped"),  # not due: costs nothing
    EntryStatus("mimic-seed1", "started", 15, 30.0),  # due, half done: certain now
    EntryStatus("capped", "done", 2, 2.0),  # trained under --max-epochs 2
    EntryStatus("new-entry", "not started"),  # added to the config after the plan
]


def test_the_whole_zoo_is_priced_by_the_plan_at_the_pace_so_far() -> None:
    """Done: 20 (teacher) + 2 (a third of kd) + 1.5 (half of mimic-seed1) + 0.2 (2 of 30 epochs)
    = 23.7 planned CPU-hours in 47.4 h of wall time, a pace of 2; left: 4 (kd) + 9 (rocket) +
    1.5 (mimic-seed1), and 6 more if kd-seed1 is due."""
    est = zoo_time_left(STATUSES, PLAN, elapsed_hours=47.4)
    assert est.cpu_done == pytest.approx(23.7)
    assert est.pace == pytest.approx(2.0)
    assert est.cpu_left == pytest.approx(14.5)
    assert est.cpu_if_due == pytest.approx(6.0)
    assert est.unpriced == ("new-entry",)
    assert est.cores_now == pytest.approx(1.5)  # kd trains at 150 img/s, 1.5x the plan's core
    # before any epoch is logged there is no pace, only the plan's CPU-hours
    fresh = zoo_time_left([EntryStatus("teacher", "not started")], PLAN, elapsed_hours=0.0)
    assert (fresh.cpu_left, fresh.cpu_done, fresh.pace) == (20.0, 0.0, None)
    # a second seed whose comparison reads beyond noise now is not due: it costs nothing; one
    # that reads within noise is certain
    read = [*STATUSES[:3], replace(STATUSES[3], due="not due: +1.20 points, beyond noise")]
    assert zoo_time_left(read, PLAN, 47.4).cpu_if_due == 0.0
    read[3] = replace(STATUSES[3], due="due: +0.12 points, within noise")
    assert zoo_time_left(read, PLAN, 47.4).cpu_left == pytest.approx(14.5 - 1.5 + 6.0)
    assert "due: +0.12 points, within noise" in format_status(read, Path("/nonexistent"))
    # an adopted teacher (rebuilt from a served model) is not left, and took no time here
    adopted = [EntryStatus("teacher", "adopted", 40, 40.0), *STATUSES[1:]]
    est = zoo_time_left(adopted, PLAN, elapsed_hours=3.7)
    assert (est.cpu_done, est.pace, est.cpu_left) == pytest.approx((3.7, 1.0, 14.5))


@pytest.mark.parametrize(
    "training",
    [
        [EntryStatus("kd", "training", 0, 30.0, lane=1)],  # no epoch yet: no rate
        [EntryStatus("teacher", "training", 3, 40.0, img_per_s=30.0, lane=1)],  # no images
        [EntryStatus("new-entry", "training", 3, 30.0, img_per_s=30.0, lane=1)],  # unpriced
        [EntryStatus("kd", "paused", 3, 30.0, img_per_s=30.0, lane=1)],  # paused: no rate now
    ],
)
def test_the_rate_now_needs_a_rate_and_its_plan_for_every_entry_training(
    training: list[EntryStatus],
) -> None:
    assert zoo_time_left(training, PLAN, elapsed_hours=1.0).cores_now is None
    kd = EntryStatus("kd", "training", 3, 30.0, img_per_s=50.0, lane=2)
    if training[0].state == "training":  # one lane without a rate spoils the sum
        assert zoo_time_left([*training, kd], PLAN, elapsed_hours=1.0).cores_now is None
    else:
        assert zoo_time_left([*training, kd], PLAN, 1.0).cores_now == pytest.approx(0.5)


def test_the_table_ends_with_the_whole_zoo(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    _log(tmp_path / "teacher", _start(40), {"event": "epoch", "epoch": 40, "time": t0 + 47.4 * 3600,
                                            "epoch_time_s": 47.4 * 3600})  # fmt: skip
    assert "whole zoo: no saved plan" in format_status(STATUSES, tmp_path)
    write_plan_record(tmp_path, PLAN)
    out = format_status(STATUSES, tmp_path)
    assert "(cpu (test), 2 cores): 14:30 of one-core CPU left (+6:00 of second seeds" in out
    assert (
        "the plan's 23:42 of CPU done took 47:24 of wall time): about 29:00 of training "
        "left, 41:00 if every second seed is due" in out
    )
    assert (
        "(1.50 cores' worth of the plan's one-core img/s): about 9:40 of training left, "
        "13:40 if every second seed is due" in out
    )
    assert out.splitlines()[-1].endswith("run zoo-plan again): new-entry")
    # nothing left: no whole-zoo lines
    assert "whole zoo" not in format_status([EntryStatus("teacher", "done", 40, 40.0)], tmp_path)
    # a plan but no epoch done yet: the floor, the CPU time over the cores
    out = format_status([EntryStatus("teacher", "not started")], tmp_path / "fresh")
    assert "whole zoo: no saved plan" in out
    write_plan_record(tmp_path / "fresh", PLAN)
    out = format_status([EntryStatus("teacher", "not started")], tmp_path / "fresh")
    assert "at least 10:00 of training left (the CPU time over 2 cores)" in out


def test_the_command_prices_the_zoo_once_a_plan_is_saved(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_zoo_config(config_path("cifar10"))
    entries = [config["teacher"], *config["students"]]
    plan = PlanRecord(1_800_000_000.0, "cpu (test)", 2, {
        str(e["name"]): PlannedCost(float(e.get("epochs", 30)), 1.0,
                                    conditional=bool(e.get("second_seed_of")))
        for e in entries
    })  # fmt: skip
    write_plan_record(work, plan)
    assert main(["zoo-status", "--dataset", "cifar10", "--out", str(work.parent)]) == 0
    out = capsys.readouterr().out
    assert "whole zoo, by the plan of" in out and "of one-core CPU left" in out
    assert "not in the plan" not in out


def test_epochs_trained_on_an_accelerator_count_as_done_but_not_in_the_rate_or_the_pace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zoo trained part way with --train-only on a GPU machine and resumed on the CPU: the
    GPU's epochs are done, but the rate, the time left and the pace come from the CPU's alone
    (its img/s would promise the rest in minutes)."""
    work = tmp_path / "zoo" / ".work"
    t0 = 1_800_000_000.0

    def epoch(n: int, rate: float, end: float, seconds: float) -> dict[str, object]:
        return {"event": "epoch", "epoch": n, "test_top1": n / 100, "img_per_s": rate,
                "time": t0 + end, "epoch_time_s": seconds}  # fmt: skip

    gpu = {**_start(30), "device": "cuda (NVIDIA H200)", "time": t0}
    cpu = {**_start(30, "resume"), "device": "cpu (AMD EPYC, 2 cores, 1 thread)", "time": t0 + 900}
    _log(work / "rocket-wrn-16-1", gpu, *[epoch(n, 500.0, 60.0 * n, 60.0) for n in (1, 2, 3, 4)],
         cpu, epoch(5, 200.0, 1150.0, 250.0), epoch(6, 100.0, 1650.0, 500.0))  # fmt: skip
    _log(work / "mimic-wrn-16-1", gpu, epoch(1, 2000.0, 30.0, 30.0))  # not resumed yet
    config = load_zoo_config(config_path("cifar10"))
    status = {s.name: s for s in zoo_status(config, work)}
    rocket, mimic = status["rocket-wrn-16-1"], status["mimic-wrn-16-1"]
    assert (rocket.epochs_done, rocket.epochs_elsewhere) == (6, 4)
    assert rocket.img_per_s == pytest.approx(150.0)  # the CPU's two epochs
    assert rocket.hours_left == pytest.approx(24 * 50_000 / 150.0 / 3600)
    assert (mimic.epochs_done, mimic.epochs_elsewhere, mimic.img_per_s) == (1, 1, None)
    assert elapsed_training_hours(work) == pytest.approx(750 / 3600 + 240 / 3600)
    assert elapsed_training_hours(work, "cpu") == pytest.approx(750 / 3600)
    plan = PlanRecord(t0, "cpu (test)", 2, {"rocket-wrn-16-1": PlannedCost(30, 3.0),
                                            "mimic-wrn-16-1": PlannedCost(30, 3.0)})  # fmt: skip
    est = zoo_time_left([rocket, mimic], plan, elapsed_training_hours(work, "cpu"))
    assert est.cpu_done == pytest.approx(3.0 * 2 / 30)  # the CPU's epochs alone
    assert est.cpu_left == pytest.approx(3.0 * 24 / 30 + 3.0 * 29 / 30)
    write_plan_record(work, plan)
    assert main(["zoo-status", "--dataset", "cifar10", "--out", str(work.parent)]) == 0
    out = capsys.readouterr().out
    assert "epochs trained on another kind of device than here (cpu): 5, done but left out" in out
