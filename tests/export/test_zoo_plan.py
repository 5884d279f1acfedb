"""The zoo plan prices each entry from measured rates, the teacher's logits once per stream."""

from __future__ import annotations

import pytest

from export.__main__ import main
from export.zoo import config_path, load_zoo_config
from export.zoo_plan import PlannedEntry, Rates, architectures, plan_zoo, wall_hours

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


def _entry(name: str, hours: float, *after: str, conditional: bool = False) -> PlannedEntry:
    return PlannedEntry(name, "m", 1, hours, 0.0, conditional=conditional, after=after)


def test_the_wall_time_follows_the_lanes_schedule() -> None:
    """Entries that need nothing run beside the teacher; the others wait for it; a lone entry
    gets every core, a running one left alone is raised to every core; second seeds may be left
    out."""
    plan = [
        _entry("teacher", 10.0),
        _entry("alone", 4.0),
        _entry("rocket", 8.0),
        _entry("kd", 6.0, "teacher"),
        _entry("kd-seed1", 6.0, "teacher", "kd", conditional=True),
    ]
    # Two lanes on two cores: teacher 0-10 beside alone 0-4 and rocket 4-12; kd from 10 on one
    # core, left alone at 12 with 4 of its 6 hours to go: raised to both cores, done at 14; then
    # kd-seed1 14-17 alone on both cores.
    assert wall_hours(plan, 2, 2) == pytest.approx(17.0)
    assert wall_hours(plan, 2, 2, conditional=False) == pytest.approx(14.0)
    # One lane: in turn, each on every core.
    assert wall_hours(plan, 1, 2) == pytest.approx(34.0 / 2)
    # More lanes than cores count as one lane per core.
    assert wall_hours(plan, 8, 2) == wall_hours(plan, 2, 2)
    with pytest.raises(ValueError, match="wait on each other"):
        wall_hours([_entry("a", 1.0, "b"), _entry("b", 1.0, "a")], 2, 2)


def test_the_cifar10_plan_waits_only_where_it_must() -> None:
    config = load_zoo_config(config_path("cifar10"))
    plan = {p.name: p for p in plan_zoo(config, RATES, N)}
    assert plan["baseline-wrn-16-1"].after == ()
    assert plan["mimic-wrn-16-1"].after == ("teacher-wrn-40-2",)
