"""A zoo's config: the packaged plans, checks of a broken one, prerequisites, second seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from export.comparisons import METHOD_STEPS
from export.distill import METHODS
from export.models import ARCHITECTURES
from export.training import resolve_config
from export.zoo_config import (
    ZOO_KEYS,
    ZOO_TEACHER,
    ZooError,
    config_path,
    load_zoo_config,
    prerequisites,
    second_seed_reason,
)
from service.contract.model_card import read_manifest

ALL_METHODS = {"baseline", "kd", "fitnet", "mimic", "rocket", "rocket-kd"}
# The CIFAR-10 zoo is cut to a CPU budget: the Rocket Launching comparison and hard compression.
CIFAR_METHODS = ALL_METHODS


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_packaged_config_covers_every_method_and_resolves(dataset: str) -> None:
    config = load_zoo_config(config_path(dataset))
    assert config["dataset"] == dataset
    entries = [config["teacher"], *config["students"]]
    methods = {e.get("method", config.get("defaults", {}).get("method")) for e in entries}
    assert methods == (ALL_METHODS if dataset == "digits" else CIFAR_METHODS)
    assert set(METHODS) >= ALL_METHODS
    assert any(str(e["student"]).startswith("mobilenetv2") for e in config["students"])
    assert sum(1 for e in entries if "int8" in e.get("variants", [])) >= 2
    for entry in entries:
        assert entry["student"] in ARCHITECTURES
        cfg: dict[str, Any] = {**config.get("defaults", {}), **entry}
        for key in ZOO_KEYS:  # the zoo's own keys (name, variants, second-seed conditions)
            cfg.pop(key, None)
        if cfg.get("teacher") == ZOO_TEACHER:
            cfg["teacher"] = config["teacher"]["student"]
        resolve_config(cfg)  # raises ConfigError on an unknown key or a bad value


def test_the_cifar10_plan_holds_every_study_of_the_report() -> None:
    """Every method on WRN-16-1 at one budget, the three Rocket ablations beside Rocket at theirs,
    deep vs shallow, MobileNet alone and with KD, and second seeds."""
    config = load_zoo_config(config_path("cifar10"))
    default_epochs = config["defaults"]["epochs"]
    runs = [
        (e["method"], e["student"], e.get("epochs", default_epochs), e.get("seed", 0), e)
        for e in config["students"]
    ]
    main = {m for m, arch, ep, seed, _ in runs if arch == "wrn-16-1" and ep == default_epochs}
    assert main == ALL_METHODS
    short = [e for m, _, ep, _, e in runs if m == "rocket" and ep < default_epochs]
    flags = [(e.get("gradient_block", True), e.get("sharing"), e.get("joint", True)) for e in short]
    assert (True, "interval", True) in flags  # Rocket itself at the ablation's budget
    assert {(False, "interval", True), (True, "none", True), (True, "interval", False)} <= set(
        flags
    )
    shallow = {m for m, arch, *_ in runs if arch.startswith("shallow")}
    assert shallow == {"baseline", "mimic"}
    assert {m for m, arch, *_ in runs if arch.startswith("mobilenetv2")} == {"baseline", "kd"}
    seeds = {m for m, arch, ep, seed, _ in runs if seed != 0 and ep == default_epochs}
    assert seeds == ALL_METHODS
    assert config["teacher"]["epochs"] >= default_epochs >= 30
    # pick serves each architecture's most accurate network, whichever seed or study it is from
    assert all("int8" in e["variants"] for e in [config["teacher"], *config["students"]])


def test_a_broken_config_is_a_zoo_error(tmp_path: Path) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text("dataset: digits\nteacher: {name: t, student: resnet8}\nstudents: [{}]\n")
    with pytest.raises(ZooError, match="needs a 'name'"):
        load_zoo_config(path)
    path.write_text("dataset: [unclosed\n")
    with pytest.raises(ZooError, match="cannot read zoo config"):
        load_zoo_config(path)
    with pytest.raises(ZooError, match="invalid YAML on line 2: expected ',' or ']'") as exc:
        load_zoo_config(path)
    assert "\n" not in str(exc.value)


def test_prerequisites_of_zoo_entries() -> None:
    config = load_zoo_config(config_path("cifar10"))
    entries = {e["name"]: e for e in config["students"]}
    teacher = config["teacher"]["name"]
    assert config["teacher_first"] is True  # the method table's students before the rest
    assert prerequisites(config["teacher"], config) == []
    assert prerequisites(entries["baseline-wrn-16-1"], config) == [teacher]
    assert prerequisites(entries["kd-wrn-16-1-seed1"], config) == [
        teacher, "kd-wrn-16-1", "baseline-wrn-16-1", "rocket-wrn-16-1", "rocket-kd-wrn-16-1"
    ]  # fmt: skip
    beside = {**config, "teacher_first": False}
    assert prerequisites(entries["baseline-wrn-16-1"], beside) == []
    assert prerequisites(entries["rocket-wrn-16-1"], beside) == []
    assert prerequisites(entries["kd-wrn-16-1"], beside) == [teacher]
    assert prerequisites(entries["baseline-wrn-16-1-seed1"], beside) == [
        "baseline-wrn-16-1", "kd-wrn-16-1", "fitnet-wrn-16-1", "mimic-wrn-16-1",
        "rocket-wrn-16-1", "rocket-kd-wrn-16-1",
    ]  # fmt: skip


def _scored(base: Any, name: str, top1: float, version: int = 1) -> Any:
    metrics = base.metrics.model_copy(update={"n": 10_000, "top1": top1})
    return base.model_copy(update={"name": name, "version": version, "metrics": metrics})


SECOND_SEED = {
    "name": "kd-seed1",
    "second_seed_of": "kd",
    "when_within_noise_of": ["alone", "rocket"],
}


@pytest.mark.parametrize(
    ("kd", "alone", "rocket", "needed"),
    [
        (0.900, 0.880, 0.870, False),  # +2.0 and +3.0 points: beyond 2 s.e. (~0.88)
        (0.900, 0.895, 0.870, True),  # +0.5 over alone: within noise, a second seed is due
        (0.900, 0.880, 0.897, True),  # within noise of the second rival
        (0.900, 0.880, None, True),  # a rival without a card yet: cannot tell, so train
        (None, 0.880, 0.870, True),  # no first seed yet
    ],
)
def test_a_second_seed_trains_only_when_its_first_seed_is_within_noise(
    digits_repo: Path, kd: float | None, alone: float, rocket: float | None, needed: bool
) -> None:
    base = read_manifest(digits_repo / "digits-logreg")
    scores = {"kd": kd, "alone": alone, "rocket": rocket}
    cards = [_scored(base, f"z-{n}", v) for n, v in scores.items() if v is not None]
    run, why = second_seed_reason(SECOND_SEED, cards, lambda n: f"z-{n}")
    assert run is needed, why
    if not needed:
        assert "kd vs alone: +2.00 points" in why and "beyond noise" in why


def test_a_second_seed_reads_the_latest_version_of_its_first_seed(digits_repo: Path) -> None:
    """A retrained first seed (version 2) is what the decision reads."""
    base = read_manifest(digits_repo / "digits-logreg")
    cards = [
        _scored(base, "z-kd", 0.881, version=1),
        _scored(base, "z-kd", 0.900, version=2),
        _scored(base, "z-alone", 0.880),
        _scored(base, "z-rocket", 0.870),
    ]
    assert second_seed_reason(SECOND_SEED, cards, lambda n: f"z-{n}")[0] is False
    assert second_seed_reason(SECOND_SEED, cards[:1] + cards[2:], lambda n: f"z-{n}")[0] is True


def test_second_seeds_are_due_for_every_comparison_the_method_table_reads() -> None:
    """For each step of the report's method table (alone -> KD, KD -> Rocket, ...) each side's
    second seed is due when the two first seeds are within noise of each other."""
    config = load_zoo_config(config_path("cifar10"))
    rivals = {
        e["second_seed_of"]: set(e["when_within_noise_of"])
        for e in config["students"]
        if e.get("second_seed_of")
    }
    pairs = {(a, b) for first, named in rivals.items() for a, b in ((first, n) for n in named)}
    wanted = set()
    for low, high in METHOD_STEPS:
        a, b = f"{low}-wrn-16-1", f"{high}-wrn-16-1"
        wanted |= {(a, b), (b, a)}
    assert pairs == wanted


def test_conditional_entries_must_name_zoo_entries(tmp_path: Path) -> None:
    config = load_zoo_config(config_path("cifar10"))
    seeds = [e for e in config["students"] if e.get("second_seed_of")]
    assert {e["second_seed_of"] for e in seeds} == {
        f"{m}-wrn-16-1" for m in ("baseline", "kd", "fitnet", "mimic", "rocket", "rocket-kd")
    }
    bad = dict(config)
    bad["students"] = [*config["students"], {**seeds[0], "name": "x", "second_seed_of": "nope"}]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ZooError, match="names no zoo entry 'nope'"):
        load_zoo_config(path)
