"""docs/offline.md's zoo tables are regenerated from models/, and a stale one is caught."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from export.pick import ZOO_CARDS_FILENAME, report_cards
from export.report import find_teacher
from service.contract.model_card import model_dirs
from tests.support.cli import ROOT
from tests.support.zoo import teacher, zoo_cards


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zoo_tables", ROOT / "scripts/zoo_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("zoo_tables", module)
    spec.loader.exec_module(module)
    return module


zoo_tables = _script()
DOC = (ROOT / "docs/offline.md").read_text(encoding="utf-8")


def test_the_committed_tables_are_those_of_models() -> None:
    assert zoo_tables.render(DOC, ROOT / "models") == DOC


def test_a_figure_edited_by_hand_is_put_back() -> None:
    big = teacher()
    row = next(line for line in DOC.splitlines() if line.startswith(f"| {big.name} |"))
    figure = f"{big.metrics.top1 * 100:.2f}"
    assert f"| {figure} |" in row
    stale = DOC.replace(row, row.replace(f"| {figure} |", "| 12.34 |"))
    assert stale != DOC and zoo_tables.render(stale, ROOT / "models") == DOC


def test_a_smaller_repository_gives_a_smaller_table(tmp_path: Path) -> None:
    """The models table is the repository's: a model removed from it leaves the table (the
    methods table is of every network trained, served or not)."""
    kept = [c.name for c in zoo_cards()][:3]
    for name in kept:
        shutil.copytree(ROOT / "models" / name, tmp_path / name)
    shutil.copy(ROOT / "models" / ZOO_CARDS_FILENAME, tmp_path)
    rendered = zoo_tables.render(DOC, tmp_path)
    block = rendered.split("<!-- zoo-models:start -->")[1].split("<!-- zoo-models:end -->")[0]
    rows = [line.split("|")[1].strip() for line in block.splitlines() if line.startswith("| cifar")]
    assert sorted(rows) == sorted(kept)


def test_a_doc_without_its_markers_is_refused() -> None:
    with pytest.raises(SystemExit, match="zoo-methods:start"):
        zoo_tables.render(DOC.replace("<!-- zoo-methods:start -->", ""), ROOT / "models")


def test_a_study_is_its_tables_and_readings_or_says_it_is_not_trained_yet() -> None:
    trained = report_cards(ROOT / "models")[0]
    depth = zoo_tables.study(zoo_tables.render_depth(trained))
    assert depth[0].startswith("| model |") and not any(line.startswith("## ") for line in depth)
    readings = [line for line in depth if line.startswith("- ")]
    assert readings and all("points (" in line for line in readings)
    assert all(line in DOC for line in depth)  # the committed docs carry it
    deep_only = [c for c in trained if not c.training.architecture.startswith("shallow")]
    assert zoo_tables.study(zoo_tables.render_depth(deep_only)) == [zoo_tables.NOT_YET]
    # A report section of several parts (an ablation per budget) keeps each part's name.
    section = ["## A (15 epochs)", "", "intro", "", "| a |", "", "## A (30 epochs)", "", "more",
               "", "| b |", "- a reading", ""]  # fmt: skip
    assert zoo_tables.study(section) == [
        "| a |",
        "",
        "**A (30 epochs)**",
        "",
        "| b |",
        "- a reading",
    ]


def test_the_training_paragraph_counts_the_networks_and_their_time(tmp_path: Path) -> None:
    """The networks REPORT.md covers, of the config's entries, on what, and how long: the report's
    Training figures (a network's minutes from its card), not copied by hand."""
    from export.report import training_figures
    from export.zoo_config import load_zoo_config

    trained = [c for c in report_cards(ROOT / "models")[0] if c.derived_from is None]
    figures = training_figures(trained)
    config = load_zoo_config(ROOT / "models" / "zoo-config.yaml")
    block = DOC.split("<!-- zoo-training:start -->")[1].split("<!-- zoo-training:end -->")[0]
    entries = 1 + len(config["students"])
    assert f"{len(trained)} networks trained of the config's {entries} " in block
    assert f": {figures.elapsed_text()} of elapsed training" in block
    assert f"; {figures.summed_text()} summed over the networks)." in block
    assert figures.summed_minutes == round(sum(c.training.wall_time_s for c in trained) / 60)
    # without the zoo's config beside the models, the paragraph does not guess the count (three
    # served networks: the teacher and two methods on WRN-16-1, as the method table needs)
    served = {d.name for d in model_dirs(ROOT / "models")}
    head = find_teacher(trained)
    assert head is not None
    wrn = [c for c in trained if c.name in served and c.training.architecture == "wrn-16-1"]
    baseline = next(c for c in wrn if c.training.method == "baseline")
    other = next(c for c in wrn if c.training.method != "baseline")
    for card in (head, baseline, other):
        shutil.copytree(ROOT / "models" / card.name, tmp_path / card.name)
    rendered = zoo_tables.render(DOC, tmp_path)
    block = rendered.split("<!-- zoo-training:start -->")[1].split("<!-- zoo-training:end -->")[0]
    assert "3 networks trained, on " in block and "config's" not in block
