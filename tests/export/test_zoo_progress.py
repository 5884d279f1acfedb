"""What a zoo has not trained yet: read from the config it recorded, told at the top of REPORT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from export.pick import pick
from export.report import render_report, write_report
from export.zoo_progress import (
    CONFIG_FILENAME,
    record_config,
    recorded_config,
    render_progress,
    untrained,
)
from service.contract.model_card import ModelCard, ProfileRow, read_manifest, write_manifest
from tests.support.cards import scored_card
from tests.support.cli import run_module
from tests.support.onnx_repo import build_digits_model

CONFIG: dict[str, Any] = {
    "dataset": "cifar10",
    "defaults": {"epochs": 30},
    "teacher": {"name": "teacher-wrn-40-2", "method": "baseline", "student": "wrn-40-2",
                "epochs": 40},
    "students": [
        {"name": "baseline-wrn-16-1", "method": "baseline", "student": "wrn-16-1"},
        {"name": "kd-wrn-16-1", "method": "kd", "student": "wrn-16-1", "teacher": "zoo"},
        {"name": "kd-mobilenetv2-0.5", "method": "kd", "student": "mobilenetv2-0.5",
         "teacher": "zoo"},
        {"name": "baseline-wrn-16-1-seed1", "method": "baseline", "student": "wrn-16-1",
         "seed": 1, "second_seed_of": "baseline-wrn-16-1",
         "when_within_noise_of": ["kd-wrn-16-1"]},
    ],
}  # fmt: skip
ROWS = tuple(
    ProfileRow(batch_size=b, p50_ms=b, p99_ms=2.0 * b, images_per_s=1000.0) for b in (1, 8, 32)
)


@pytest.fixture
def base(digits_repo: Path) -> ModelCard:
    return read_manifest(digits_repo / "digits-logreg")


def _trained(base: ModelCard, kd_top1: float) -> list[ModelCard]:
    """The teacher (and its int8 variant), WRN-16-1 alone at 88 % and KD at ``kd_top1``."""
    teacher = scored_card(base, "cifar10-teacher-wrn-40-2", 0.93, ROWS, method="baseline",
                          architecture="wrn-40-2", teacher=None, epochs=40.0)  # fmt: skip
    variant = teacher.model_copy(
        update={"name": "cifar10-teacher-wrn-40-2-int8", "derived_from": teacher.name}
    )
    alone = scored_card(base, "cifar10-baseline-wrn-16-1", 0.88, ROWS, method="baseline",
                        architecture="wrn-16-1", teacher=None, epochs=30.0)  # fmt: skip
    kd = scored_card(base, "cifar10-kd-wrn-16-1", kd_top1, ROWS, method="kd",
                     architecture="wrn-16-1", teacher=teacher.name, epochs=30.0)  # fmt: skip
    return [teacher, variant, alone, kd]


def test_untrained_lists_the_entries_without_a_card_and_whether_they_are_due(
    base: ModelCard,
) -> None:
    within = untrained(CONFIG, _trained(base, kd_top1=0.884))  # 0.4 points: within noise
    assert [(u.name, u.due) for u in within] == [
        ("cifar10-kd-mobilenetv2-0.5", True),
        ("cifar10-baseline-wrn-16-1-seed1", True),
    ]
    mobile, seed = within
    assert (mobile.method, mobile.architecture, mobile.epochs, mobile.reason) == (
        "kd", "mobilenetv2-0.5", 30.0, ""
    )  # fmt: skip
    assert seed.reason.startswith("second seed, if within noise: baseline-wrn-16-1 vs kd-wrn-16-1")
    assert seed.reason.endswith(", within noise")
    beyond = untrained(CONFIG, _trained(base, kd_top1=0.92))  # 4 points: no second seed needed
    assert [(u.name, u.due) for u in beyond][1] == ("cifar10-baseline-wrn-16-1-seed1", False)
    assert "beyond noise" in beyond[1].reason
    # An int8 variant is not its network trained: a config whose teacher only has one is missing.
    variant_only = [c for c in _trained(base, 0.92) if c.name != "cifar10-teacher-wrn-40-2"]
    assert untrained(CONFIG, variant_only)[0].name == "cifar10-teacher-wrn-40-2"
    assert untrained(CONFIG, variant_only)[0].epochs == 40.0


def test_the_report_names_an_intermediate_release_and_a_complete_one(base: ModelCard) -> None:
    cards = _trained(base, kd_top1=0.92)
    text = render_report(cards, "zoo", progress=render_progress(CONFIG, cards))
    header = text.split("\n\n| model |")[0]
    assert (
        "- Zoo: `zoo-config.yaml` lists 5 networks; 3 trained, 1 not yet (see *Not trained yet*), "
        "1 second seed(s) not needed (their comparisons are beyond noise)." in header
    )
    section = text.split("## Not trained yet")[1].split("\n## ")[0]
    assert "| cifar10-kd-mobilenetv2-0.5 | kd | mobilenetv2-0.5 | 30 | - |" in section
    assert "seed1" not in section  # not due: not listed as missing
    assert text.index("## Not trained yet") < text.index("## Training")

    mobile = scored_card(base, "cifar10-kd-mobilenetv2-0.5", 0.86, ROWS, method="kd",
                         architecture="mobilenetv2-0.5", teacher=None)  # fmt: skip
    every = [*cards, mobile]
    done = render_report(every, "zoo", progress=render_progress(CONFIG, every))
    assert (
        "lists 5 networks; 4 trained, 1 second seed(s) not needed (their comparisons are beyond "
        "noise): the zoo is complete." in done
    )
    assert "## Not trained yet" not in done
    assert "- Zoo:" not in render_report(cards, "zoo")  # no config: nothing said


def test_write_report_reads_the_config_the_repository_records(
    base: ModelCard, tmp_path: Path
) -> None:
    cards = _trained(base, kd_top1=0.884)
    write_report(tmp_path, cards, "zoo")
    assert "Not trained yet" not in (tmp_path / "REPORT.md").read_text(encoding="utf-8")
    source = tmp_path / "zoo.yaml"
    source.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    record_config(source, tmp_path)
    assert recorded_config(tmp_path) == CONFIG
    write_report(tmp_path, cards, "zoo")
    section = (tmp_path / "REPORT.md").read_text(encoding="utf-8").split("## Not trained yet")[1]
    seed = "| cifar10-baseline-wrn-16-1-seed1 | baseline | wrn-16-1 | 30 | second seed, if within"
    assert seed in section
    (tmp_path / CONFIG_FILENAME).write_text("teacher: [", encoding="utf-8")
    write_report(tmp_path, cards, "zoo")  # an unreadable config does not stop the report
    assert "- Zoo: " in (tmp_path / "REPORT.md").read_text(encoding="utf-8")
    assert "cannot read zoo config" in (tmp_path / "REPORT.md").read_text(encoding="utf-8")


def _zoo(tmp_path: Path, base: ModelCard) -> Path:
    """A zoo repository with real files under the cards of ``_trained``."""
    zoo = tmp_path / "zoo"
    for card in _trained(base, kd_top1=0.884):
        built = build_digits_model(zoo, card.name)  # its file, hash and version stay
        scores = ("training", "metrics", "profile", "derived_from")
        scored = built.model_copy(update={k: getattr(card, k) for k in scores})
        write_manifest(zoo / card.name, scored)
    return zoo


def test_pick_serves_the_zoo_config_beside_the_models(base: ModelCard, tmp_path: Path) -> None:
    zoo = _zoo(tmp_path, base)
    source = tmp_path / "zoo.yaml"
    source.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    into = tmp_path / "models"
    pick(zoo, into, config_file=source)
    assert recorded_config(into) == CONFIG
    report = (into / "REPORT.md").read_text(encoding="utf-8")
    assert "2 not yet (see *Not trained yet*)" in report
    # `export report` rewrites it from the served repository alone, config included.
    (into / "REPORT.md").unlink()
    proc = run_module("export", "report", str(into))
    assert proc.returncode == 0, proc.stderr
    assert "| cifar10-kd-mobilenetv2-0.5 | kd |" in (into / "REPORT.md").read_text("utf-8")
    # A zoo that recorded no config: the served copy, another zoo's, goes.
    pick(zoo, into)
    assert not (into / CONFIG_FILENAME).exists()
    assert "Not trained yet" not in (into / "REPORT.md").read_text(encoding="utf-8")
    # An invalid config is refused before the served repository changes.
    (tmp_path / "bad.yaml").write_text("dataset: cifar10\n", encoding="utf-8")
    proc = run_module("export", "pick", str(zoo), "--into", str(into), "--config",
                      str(tmp_path / "bad.yaml"))  # fmt: skip
    assert proc.returncode == 1 and "missing key 'teacher'" in proc.stderr
    assert not (into / CONFIG_FILENAME).exists()


def test_pick_serves_the_networks_the_config_lists_once_trained(
    base: ModelCard, tmp_path: Path
) -> None:
    zoo = _zoo(tmp_path, base)
    source = tmp_path / "zoo.yaml"
    into = tmp_path / "models"
    source.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    assert "cifar10-baseline-wrn-16-1" not in pick(zoo, into, config_file=source).reasons
    # Listed: WRN-16-1 alone is served though KD beats it; the MobileNet is not trained yet.
    listed = {**CONFIG, "serve": ["baseline-wrn-16-1", "kd-mobilenetv2-0.5"]}
    source.write_text(yaml.safe_dump(listed), encoding="utf-8")
    picked = pick(zoo, into, config_file=source)
    assert picked.reasons["cifar10-baseline-wrn-16-1"] == "listed under serve in zoo-config.yaml"
    assert "cifar10-kd-mobilenetv2-0.5" not in picked.reasons
    assert (into / "cifar10-baseline-wrn-16-1").is_dir()
    assert "| cifar10-kd-mobilenetv2-0.5 | kd |" in (into / "REPORT.md").read_text("utf-8")
    for serve, problem in [("kd-wrn-16-1", "serve is a list"), (["nope"], "no zoo entry 'nope'")]:
        source.write_text(yaml.safe_dump({**CONFIG, "serve": serve}), encoding="utf-8")
        proc = run_module("export", "pick", str(zoo), "--into", str(into), "--config",
                          str(source))  # fmt: skip
        assert proc.returncode == 1 and problem in proc.stderr
    assert (into / "cifar10-baseline-wrn-16-1").is_dir()  # refused before anything changed
