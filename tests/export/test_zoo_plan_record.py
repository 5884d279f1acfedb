"""The saved zoo plan reads back as written; a missing, torn or foreign file reads as none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.zoo_plan_record import (
    PLAN_FILENAME,
    PlannedCost,
    PlanRecord,
    hm,
    read_plan_record,
    write_plan_record,
)

RECORD = PlanRecord(
    measured_at=1_800_000_000.0,
    machine="cpu (AMD EPYC)",
    cores=2,
    entries={
        "teacher": PlannedCost(epochs=40, cpu_hours=16.5),
        "kd": PlannedCost(epochs=30, cpu_hours=4.5, images=50_000),
        "kd-seed1": PlannedCost(epochs=30, cpu_hours=4.25, conditional=True),
    },
)


def test_a_plan_reads_back_as_written(tmp_path: Path) -> None:
    work = tmp_path / "zoo" / ".work"  # made on the way: a plan may come before the zoo
    path = write_plan_record(work, RECORD)
    assert path == work / PLAN_FILENAME
    assert read_plan_record(work) == RECORD
    assert list(work.iterdir()) == [path]  # no temporary file left behind
    assert RECORD.entries["kd"].per_epoch == pytest.approx(0.15)
    assert PlannedCost(epochs=0, cpu_hours=1.0).per_epoch == 0.0
    # 50,000 images in 0.15 h of one core: the plan expects 92.6 img/s of a core
    assert RECORD.entries["kd"].img_per_s == pytest.approx(50_000 / (0.15 * 3600))
    assert RECORD.entries["teacher"].img_per_s is None  # images not recorded (an older plan)


@pytest.mark.parametrize(
    "text",
    [
        '{"measured_at": 1, "machine": "cpu", "cores": 2, "entr',  # cut short
        "[]",
        '{"measured_at": 1, "machine": "cpu", "cores": 2}',  # no entries
        '{"measured_at": 1, "machine": "cpu", "cores": 2, "entries": {"a": {"epochs": "x"}}}',
        '{"measured_at": 1, "machine": "cpu", "cores": 2, "entries": ["a"]}',
    ],
)
def test_an_unreadable_plan_is_no_plan(tmp_path: Path, text: str) -> None:
    (tmp_path / PLAN_FILENAME).write_text(text, encoding="utf-8")
    assert read_plan_record(tmp_path) is None


def test_no_plan_file_is_no_plan(tmp_path: Path) -> None:
    assert read_plan_record(tmp_path) is None
    assert read_plan_record(tmp_path / "missing") is None


def test_a_plan_of_an_older_release_reads_without_what_it_lacks(tmp_path: Path) -> None:
    """A plan saved before entries recorded their images still prices the zoo (no rate now)."""
    blob = {
        "measured_at": 1,
        "machine": "m",
        "cores": 1,
        "entries": {"kd": {"epochs": 30, "cpu_hours": 3.0, "conditional": False}},
    }
    (tmp_path / PLAN_FILENAME).write_text(json.dumps(blob), encoding="utf-8")
    assert read_plan_record(tmp_path) == PlanRecord(1.0, "m", 1, {"kd": PlannedCost(30, 3.0)})


@pytest.mark.parametrize(
    ("hours", "text"),
    [(0.0, "0:00"), (0.25, "0:15"), (1 / 120, "0:00"), (0.999, "1:00"), (72.8, "72:48")],
)
def test_hours_print_as_hours_and_minutes_rounded_to_the_minute(hours: float, text: str) -> None:
    assert hm(hours) == text
