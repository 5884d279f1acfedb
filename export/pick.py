"""Pick what a repository serves from a zoo: the teacher, each family's best, the front, the listed.

A zoo trains many networks to compare methods; a user serves a few. ``pick`` copies the chosen
models (every version folder and card, unchanged, so their hashes still verify) from the zoo's
repository into the served one, removes the models it no longer serves, and keeps the cards of
every zoo network in ``zoo-cards.json`` so that REPORT.md can still compare them all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from export.pareto import pareto_front
from export.report import find_teacher, write_report
from export.repository import copy_model, load_cards
from export.zoo_config import load_zoo_config, model_name
from export.zoo_progress import CONFIG_FILENAME, record_config
from service.contract.model_card import ModelCard, ModelRepositoryError, model_dirs

ZOO_CARDS_FILENAME = "zoo-cards.json"


@dataclass(frozen=True)
class Picked:
    """The models chosen, each with the reason it is served."""

    reasons: dict[str, str]


def _with_variants(base: ModelCard, cards: Sequence[ModelCard]) -> list[ModelCard]:
    return [base, *(c for c in cards if c.derived_from == base.name)]


def choose(
    cards: Sequence[ModelCard], also: Collection[str] = (), listed: Collection[str] = ()
) -> Picked:
    """The teacher and its variants, the most accurate network of every other architecture with
    its variants, every model on the accuracy/latency Pareto front, the networks the zoo config
    lists under ``serve`` with their variants (``listed``: those not trained yet are skipped),
    and ``also``."""
    by_name = {c.name: c for c in cards}
    unknown = sorted(set(also) - set(by_name))
    if unknown:
        raise ModelRepositoryError(f"not in the zoo: {', '.join(unknown)}")
    reasons: dict[str, str] = {}
    teacher = find_teacher(cards)
    if teacher is not None:
        for c in _with_variants(teacher, cards):
            reasons[c.name] = "the teacher" + (f" ({c.precision})" if c is not teacher else "")
    trained = [c for c in cards if c.derived_from is None]
    for arch in sorted({c.training.architecture for c in trained}):
        if teacher is not None and arch == teacher.training.architecture:
            continue
        family = [c for c in trained if c.training.architecture == arch]
        best = max(family, key=lambda c: (c.metrics.top1, c.name))
        for c in _with_variants(best, cards):
            reasons.setdefault(c.name, f"most accurate {arch} ({best.metrics.top1:.2%} top-1)")
    for name in sorted(pareto_front(cards)):
        reasons.setdefault(name, "on the accuracy/latency Pareto front")
    for name in listed:
        if name in by_name:
            for c in _with_variants(by_name[name], cards):
                reasons.setdefault(c.name, f"listed under serve in {CONFIG_FILENAME}")
    for name in also:
        reasons.setdefault(name, "asked for")
    return Picked(reasons)


def read_zoo_cards(repo: Path) -> list[ModelCard]:
    """The cards ``pick`` kept of every zoo network (none when the repository is not picked)."""
    path = repo / ZOO_CARDS_FILENAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [ModelCard.model_validate(item) for item in data]
    except (OSError, ValueError) as exc:
        raise ModelRepositoryError(f"{path}: unreadable zoo cards ({exc})") from None


def report_cards(repo: Path) -> tuple[list[ModelCard], set[str]]:
    """Every card REPORT.md covers (served ones as they are now, the zoo's others as kept) and
    the names served."""
    served = load_cards(repo)
    names = {c.name for c in served}
    return served + [c for c in read_zoo_cards(repo) if c.name not in names], names


def pick(
    zoo: Path, into: Path, also: Collection[str] = (), config_file: Path | None = None
) -> Picked:
    """Make ``into`` serve the models ``choose`` picks from ``zoo``; rewrite its report.

    The zoo config (``config_file``, else the one ``zoo`` recorded) goes beside the served models,
    so that the report, now and when rewritten, says what the zoo has not trained yet.
    """
    if config_file is not None and not config_file.is_file():
        raise ModelRepositoryError(f"{config_file}: no such zoo config")
    if into.exists() and not into.is_dir():
        raise ModelRepositoryError(f"{into}: is a file, not a folder for the served models")
    cards = load_cards(zoo)
    if not cards:
        raise ModelRepositoryError(f"{zoo}: no models to pick from")
    config = config_file or zoo / CONFIG_FILENAME
    listed: list[str] = []
    if config.is_file():
        spec = load_zoo_config(config)  # refuse an invalid one before anything changes
        listed = [model_name(str(spec["dataset"]), str(n)) for n in spec.get("serve", [])]
    picked = choose(cards, also, listed)
    into.mkdir(parents=True, exist_ok=True)
    if config.is_file():
        record_config(config, into)
    else:
        (into / CONFIG_FILENAME).unlink(missing_ok=True)  # another zoo's: it would mislead
    for model_dir in model_dirs(into):
        if model_dir.name not in picked.reasons:
            shutil.rmtree(model_dir)
    for name in picked.reasons:
        copy_model(zoo / name, into / name)
    kept = sorted(cards, key=lambda c: c.name)
    (into / ZOO_CARDS_FILENAME).write_text(
        json.dumps([c.model_dump(mode="json") for c in kept], indent=1) + "\n", encoding="utf-8"
    )
    dataset = ", ".join(sorted({c.metrics.dataset for c in cards}))
    title = f"Model zoo: {dataset} ({len(cards)} models trained, {len(picked.reasons)} served)"
    write_report(into, cards, title, served=set(picked.reasons))
    return picked
