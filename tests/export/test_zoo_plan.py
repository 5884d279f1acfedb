"""The zoo plan prices each entry from measured rates, the teacher's logits once per stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.__main__ import main
from export.data import load_dataset
from export.zoo_config import config_path, load_zoo_config
from export.zoo_plan import Rates, architectures, plan_zoo
from export.zoo_plan_record import PLAN_FILENAME, read_plan_record

N = 50_000
RATES = Rates(
    train={
        "wrn-40-2": 36.0,
        "wrn-16-1": 320.0,
        "wrn-40-1": 110.0,
        "mobilenetv2-0.5": 90.0,
        "shallow-2-128": 280.0,
    },
    teacher_forward=130.0,
)


def _hours(images: float, rate: float) -> float:
    return images / rate / 3600


@pytest.fixture(scope="module")
def plan() -> dict[str, object]:
    config = load_zoo_config(config_path("cifar10"))
    return {p.name: p for p in plan_zoo(config, RATES, N)}


def test_every_architecture_is_measured_teacher_first() -> None:
    config = load_zoo_config(config_path("cifar10"))
    assert architectures(config)[0] == "wrn-40-2"
    assert set(architectures(config)) == set(RATES.train)


def test_each_method_pays_for_the_networks_it_runs(plan: dict) -> None:
    assert plan["teacher-wrn-40-2"].cpu_hours == pytest.approx(_hours(40 * N, 36.0))
    assert plan["baseline-wrn-16-1"].cpu_hours == pytest.approx(_hours(30 * N, 320.0))
    rocket = _hours(30 * N, 320.0) + _hours(30 * N, 110.0)  # booster and light net
    assert plan["rocket-wrn-16-1"].cpu_hours == pytest.approx(rocket)
    # not joint: the booster trains alone first, then the light net beside the frozen booster
    assert plan["rocket-not-joint-wrn-16-1-15ep"].cpu_hours == pytest.approx(
        _hours(15 * N, 320.0) + 2 * _hours(15 * N, 110.0)
    )


def test_the_teachers_logits_are_paid_once_per_seed(plan: dict) -> None:
    """The first KD run computes 30 epochs of logits; MIMIC, Rocket+KD and FitNets' KD stage
    read them; the seed-1 KD run computes its own stream, which seed-1 Rocket+KD reads."""
    logits = _hours(30 * N, 130.0)
    kd = plan["kd-wrn-16-1"]
    assert kd.teacher_logit_hours == pytest.approx(logits)
    assert kd.cpu_hours == pytest.approx(_hours(30 * N, 320.0) + logits)
    for name in ("mimic-wrn-16-1", "rocket-kd-wrn-16-1", "kd-mobilenetv2-0.5"):
        assert plan[name].teacher_logit_hours == 0.0, name
    # FitNets' stage 1 runs the teacher live for its 6 hint epochs
    assert plan["fitnet-wrn-16-1"].cpu_hours == pytest.approx(
        _hours(30 * N, 320.0) + _hours(6 * N, 130.0)
    )
    assert plan["kd-wrn-16-1-seed1"].teacher_logit_hours == pytest.approx(logits)
    assert plan["kd-wrn-16-1-seed1"].conditional and not plan["kd-wrn-16-1"].conditional
    assert plan["rocket-kd-wrn-16-1-seed1"].teacher_logit_hours == 0.0


def test_the_command_measures_and_prints_every_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo-plan", "--dataset", "digits", "--seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    config = load_zoo_config(config_path("digits"))
    for entry in [config["teacher"], *config["students"]]:
        assert entry["name"] in out
    assert "rates measured on cpu" in out and "teacher forward" in out
    assert "total " in out and "wall time, at least" in out
    assert "saved to" not in out  # without --out the plan is printed only


def test_the_command_saves_the_plan_beside_the_zoo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --out, the plan lands in the zoo's work folder (made if the zoo has not run yet),
    every entry priced as printed, for zoo-status to read back."""
    out_dir = tmp_path / "digits-zoo"
    args = ["zoo-plan", "--dataset", "digits", "--seconds", "0.05", "--out", str(out_dir)]
    assert main(args) == 0
    assert f"saved to {out_dir / '.work' / PLAN_FILENAME}" in capsys.readouterr().out
    record = read_plan_record(out_dir / ".work")
    assert record is not None
    config = load_zoo_config(config_path("digits"))
    entries = [config["teacher"], *config["students"]]
    assert set(record.entries) == {e["name"] for e in entries}
    assert all(cost.cpu_hours > 0 for cost in record.entries.values())
    train = len(load_dataset("digits", None).train_images)
    assert {cost.images for cost in record.entries.values()} == {train}
    assert record.cores >= 1 and record.machine.startswith("cpu")


def test_the_least_wall_time_is_the_cpu_time_over_the_cores() -> None:
    """Lanes keep every core busy, so the plan's floor is its CPU time over the cores; the
    second seeds make the range."""
    from export.zoo_plan import format_plan
    from export.zoo_plan_record import hm

    planned = plan_zoo(load_zoo_config(config_path("cifar10")), RATES, N)
    total = sum(p.cpu_hours for p in planned)
    optional = sum(p.cpu_hours for p in planned if p.conditional)
    assert 0 < optional < total
    out = format_plan(planned, RATES, config_file=Path("z.yaml"), train_images=N, cores=4)
    assert f"wall time, at least: {hm((total - optional) / 4)} to {hm(total / 4)} " in out
