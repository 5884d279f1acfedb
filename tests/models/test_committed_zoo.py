"""The committed model repository (models/): what `make run` and the Docker image serve.

It must verify, stay lean, hold the CIFAR-10 zoo the report describes, and every card's top-1 must
be reproduced within 0.2 points by an evaluation that shares no code with the offline stage:
Pillow reads the JPEG test split, numpy applies the manifest's preprocessing, ONNX Runtime runs
the served file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.pick import report_cards
from export.report import find_teacher
from export.zoo_config import config_path, load_zoo_config
from export.zoo_progress import recorded_config, untrained
from service.contract.model_card import ModelCard, model_dirs, model_file, read_manifest
from tests.support.cli import ROOT, run_module
from tests.support.reeval import tensor_by_hand

MODELS = ROOT / "models"
MAX_REPO_BYTES = 30 << 20
TOLERANCE = 0.002  # 0.2 points of top-1


def _cards() -> list[ModelCard]:
    return [read_manifest(d) for d in model_dirs(MODELS)]


def _cifar_test_split() -> Path:
    root = Path(os.environ.get("ROCKETSERVE_CIFAR10", ROOT.parent / "shared/datasets/cifar10"))
    if not (root / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEG test split not found at {root / 'test'}")
    return root / "test"


def test_the_repository_verifies() -> None:
    proc = run_module("export", "verify", "models")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"ok ({len(_cards())} models, {len(_cards())} versions)")


def test_it_is_the_cifar10_zoo_and_stays_lean() -> None:
    cards = _cards()
    assert {c.metrics.dataset for c in cards} == {"cifar10"}
    assert all(c.metrics.n == 10_000 for c in cards)
    # What was trained: the served cards and, once `export pick` chose what to serve, the cards
    # it kept of the rest of the zoo (models/zoo-cards.json, compared in REPORT.md).
    reported, _ = report_cards(MODELS)
    base = [c for c in reported if c.derived_from is None]
    trained = {(c.training.method, c.training.architecture) for c in base}
    for method in ("baseline", "kd", "rocket", "rocket-kd"):
        assert (method, "wrn-16-1") in trained
    # The zoo config it was built from, when recorded (export/zoo_progress.py), is the one this
    # repository ships; an intermediate release lacks networks that train late (the MobileNets),
    # and its report lists them.
    config = recorded_config(MODELS)
    due = [] if config is None else [u for u in untrained(config, reported) if u.due]
    if config is not None:
        assert config == load_zoo_config(config_path("cifar10")), "built by another zoo config"
        report = (MODELS / "REPORT.md").read_text(encoding="utf-8")
        listed = report.split("## Not trained yet")[1].split("\n## ")[0] if due else ""
        assert all(f"| {u.name} |" in listed for u in due), "REPORT.md is older than the zoo"
    assert any(arch.startswith("mobilenetv2") for _, arch in trained) or any(
        u.architecture.startswith("mobilenetv2") for u in due
    )
    assert any(c.precision == "int8" for c in cards)
    files = [p for p in MODELS.rglob("*") if p.is_file()]
    allowed = {"model.onnx", "manifest.json", "REPORT.md", "zoo-cards.json", "zoo-config.yaml"}
    allowed |= {"pareto.png", "curves.png"}  # the report's pictures, drawn from the cards
    assert {p.name for p in files} <= allowed, "models/ holds ONNX files and their cards only"
    assert sum(p.stat().st_size for p in files) < MAX_REPO_BYTES


def test_the_best_student_is_three_times_faster_than_the_teacher() -> None:
    cards = _cards()
    teacher = find_teacher(cards)
    assert teacher is not None and teacher.training.architecture == "wrn-40-2"
    students = [c for c in cards if teacher.name not in (c.name, c.derived_from)]
    best = max(students, key=lambda c: c.metrics.top1)

    def b32(card: ModelCard) -> float:
        return next(r.images_per_s for r in card.profile.rows if r.batch_size == 32)

    assert b32(best) >= 3 * b32(teacher), f"{best.name}: {b32(best):.0f} vs {b32(teacher):.0f}"
    report = (MODELS / "REPORT.md").read_text(encoding="utf-8")
    assert f"Best student: **{best.name}**" in report


def test_the_report_sets_every_method_beside_the_paper() -> None:
    report = (MODELS / "REPORT.md").read_text(encoding="utf-8")
    methods = report.split("## Every method on one student")[1].split("\n## ")[0]
    # Rocket Launching (AAAI 2018), Table 1, WRN-16-1 error %: alone, KD, Rocket, Rocket+KD
    for paper in ("8.77", "8.39", "7.87", "7.52"):
        assert f"| {paper} |" in methods, paper


@pytest.fixture(scope="module")
def jpeg_test_split() -> tuple[list[Path], list[str]]:
    """Every JPEG of the test split and its class-folder name."""
    root = _cifar_test_split()
    pairs = sorted((p, p.parent.name) for p in root.glob("*/*.jpg"))
    return [p for p, _ in pairs], [name for _, name in pairs]


@pytest.mark.parametrize("name", [d.name for d in model_dirs(MODELS)])
def test_every_card_is_reproduced_on_the_jpeg_test_split(
    name: str, jpeg_test_split: tuple[list[Path], list[str]]
) -> None:
    paths, folders = jpeg_test_split
    assert len(paths) == 10_000
    card = read_manifest(MODELS / name)
    labels = np.array([card.labels.index(f) for f in folders])
    session = ort.InferenceSession(
        str(model_file(MODELS / name, card.version)), providers=["CPUExecutionProvider"]
    )
    correct = 0
    for start in range(0, len(paths), 500):
        x = np.stack([tensor_by_hand(p, card) for p in paths[start : start + 500]])
        logits = session.run([card.output.name], {card.input.name: x})[0]
        correct += int((logits.argmax(axis=1) == labels[start : start + 500]).sum())
    measured = correct / len(paths)
    assert abs(measured - card.metrics.top1) <= TOLERANCE, f"{measured} vs {card.metrics.top1}"


# A model named where a user reads or copies it: the README, the docs site, the defaults of
# the load tests, scripts and deployment files, the OpenAPI examples and the settings' help. The
# raw outputs under loadtest/results/ are records of past runs and stay as they were.
NAMED_IN = [
    "README.md",
    "docs/*.md",
    "loadtest/*.py",
    "scripts/*",
    "service/**/*.py",
    "deploy/**/*",
    "docker-compose*.yml",
    "Makefile",
]
# docs/offline.md's study blocks report every network the zoo trained, served or not (as
# models/REPORT.md does): generated from the cards by scripts/zoo_tables.py, not copied by hand.
STUDY_BLOCK = re.compile(r"<!-- zoo-(\w+):start -->.*?<!-- zoo-\1:end -->", re.S)


def _without_studies(path: Path) -> str:
    """The file's text, less the study blocks (tests/docs/test_zoo_tables.py checks those)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return STUDY_BLOCK.sub(lambda m: "" if m.group(1) != "models" else m.group(0), text)


MODEL_NAME = re.compile(r"\bcifar10-[a-z0-9.-]*(?:wrn|mobilenet|shallow)[a-z0-9.-]*[a-z0-9]\b")
FILE_SUFFIX = re.compile(r"\.(?:txt|csv|json|md|png|yaml)$")


def test_every_model_the_docs_and_defaults_name_is_served() -> None:
    """After a new zoo is published, the text that names the old one must follow it: a request
    copied from the docs, a load test's default model or a figure quoted for a model must name
    a model that models/ serves."""
    served = {c.name for c in _cards()}
    named: dict[str, set[str]] = {}
    for pattern in NAMED_IN:
        for path in sorted(ROOT.glob(pattern)):
            if not path.is_file():
                continue
            for match in MODEL_NAME.finditer(_without_studies(path)):
                name = match.group(0)
                if FILE_SUFFIX.search(name):  # a results file named after the model
                    continue
                named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert named, "no model named anywhere: the pattern no longer matches the zoo's names"
    missing = {name: sorted(where) for name, where in named.items() if name not in served}
    assert not missing, f"named but not served by models/: {missing}"


QUOTED_TOP1 = re.compile(MODEL_NAME.pattern + r"`? \((\d+\.\d) ?%")


def test_the_top1_the_docs_quote_beside_a_model_is_its_cards() -> None:
    """A figure like "cifar10-teacher-wrn-40-2 (83.8 %)" in a table: the accuracy is the served
    card's, so figures measured on an older zoo cannot stay beside a newer one's name."""
    top1 = {c.name: c.metrics.top1 for c in _cards()}
    quoted = []
    for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]:
        for match in QUOTED_TOP1.finditer(path.read_text(encoding="utf-8")):
            quoted.append((path.name, match.group(0).split()[0].strip("`"), float(match.group(1))))
    assert quoted, "no quoted top-1 found: the pattern no longer matches the docs"
    stale = [
        (where, name, figure)
        for where, name, figure in quoted
        if name not in top1 or round(top1[name] * 100, 1) != figure
    ]
    assert not stale, f"quoted top-1 that is not the served card's: {stale}"


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of ``text``: its rows (the header first, the rule dropped) as cells."""
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().strip("*`") for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set(":-") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_the_docs_tables_of_the_zoo_carry_the_cards_figures() -> None:
    """A table with a row per model and a "top-1 %" column (docs/offline.md's table of the zoo):
    every row names a served model with its card's top-1 and MACs, and some table lists every
    served model, so a newly published zoo cannot leave the old one's table behind."""
    cards = {c.name: c for c in _cards()}
    complete = False
    checked = 0
    for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]:
        for header, *rows in _markdown_tables(_without_studies(path)):
            if header[0] != "model" or "top-1 %" not in header:
                continue
            named = [r for r in rows if r[0].startswith("cifar10-")]
            for row in named:
                where = f"{path.name}: {row[0]}"
                assert row[0] in cards, f"{where} is not served"
                card = cards[row[0]]
                assert row[header.index("top-1 %")] == f"{card.metrics.top1 * 100:.2f}", where
                if "MACs" in header:
                    assert row[header.index("MACs")] == f"{card.macs / 1e6:.2f}M", where
                checked += 1
            complete |= {r[0] for r in named} == set(cards)
    assert checked, "no table of the zoo found: the header no longer matches"
    assert complete, "no table in the README or docs lists every served model"


SERVED_COUNT = re.compile(r"\b(\d+)\s+models(?=,?\s+a\s+WRN|\s+in\s+`models/`|\s+of\s+`models/`)")


def test_the_number_of_served_models_the_docs_give_is_the_repositorys() -> None:
    counted = [
        (path.name, int(m.group(1)))
        for path in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]
        for m in SERVED_COUNT.finditer(path.read_text(encoding="utf-8"))
    ]
    assert len(counted) >= 3, f"the pattern no longer matches the docs: {counted}"
    assert all(n == len(_cards()) for _, n in counted), counted
