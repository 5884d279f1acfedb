"""How far a zoo is from its config: the networks it has not trained yet, for REPORT.md.

A zoo records the config it runs (``zoo-config.yaml`` in its repository; ``pick`` copies it
beside the served models), so that a report written from the cards alone can still say which of
the config's networks are missing: an intermediate release says so at the top of its report, and
a finished one shows that nothing is left (second seeds that their comparisons made unnecessary
are named as such).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.zoo_config import ZooError, load_zoo_config, model_name, second_seed_reason
from service.contract.model_card import ModelCard

CONFIG_FILENAME = "zoo-config.yaml"


@dataclass(frozen=True)
class Untrained:
    """A network of the config that has no card: what it would be, and whether it is due."""

    name: str
    method: str
    architecture: str
    epochs: float | None
    due: bool
    reason: str  # "" for a plain entry; for a second seed, its condition and how it reads now


def record_config(config_file: Path, repo: Path) -> Path:
    """Copy the zoo config the zoo runs into ``repo`` (atomically: lanes may write it at once)."""
    path = repo / CONFIG_FILENAME
    tmp = repo / f".{CONFIG_FILENAME}.{os.getpid()}.tmp"
    tmp.write_text(config_file.read_text(encoding="utf-8"), encoding="utf-8")
    tmp.replace(path)
    return path


def recorded_config(repo: Path) -> dict[str, Any] | None:
    """The zoo config recorded in ``repo``, or None when it holds none."""
    path = repo / CONFIG_FILENAME
    return load_zoo_config(path) if path.is_file() else None


def untrained(config: dict[str, Any], cards: Sequence[ModelCard]) -> list[Untrained]:
    """The config's entries that no card in ``cards`` is the trained network of, in the config's
    order; a conditional second seed is ``due`` only when its comparison asks for it."""
    dataset = str(config["dataset"])
    trained = {c.name for c in cards if c.derived_from is None}
    defaults = config.get("defaults") or {}
    missing = []
    for entry in [config["teacher"], *config["students"]]:
        name = model_name(dataset, str(entry["name"]))
        if name in trained:
            continue
        due, reason = second_seed_reason(entry, list(cards), lambda n: model_name(dataset, n))
        epochs = entry.get("epochs", defaults.get("epochs"))
        missing.append(
            Untrained(
                name=name,
                method=str(entry.get("method", "baseline")),
                architecture=str(entry.get("student", "?")),
                epochs=None if epochs is None else float(epochs),
                due=due,
                reason=f"second seed, if within noise: {reason}"
                if entry.get("second_seed_of")
                else "",
            )
        )
    return missing


def _entries(config: dict[str, Any]) -> int:
    return 1 + len(config["students"])


def render_progress(config: dict[str, Any], cards: Sequence[ModelCard]) -> tuple[str, list[str]]:
    """A line for the report's header and, while networks are due, a section that lists them."""
    missing = untrained(config, cards)
    due = [u for u in missing if u.due]
    skipped = [u for u in missing if not u.due]
    total = _entries(config)
    line = (
        f"- Zoo: `{CONFIG_FILENAME}` lists {total} networks; {total - len(missing)} trained"
        + (f", {len(due)} not yet (see *Not trained yet*)" if due else "")
        + (
            f", {len(skipped)} second seed(s) not needed (their comparisons are beyond noise)"
            if skipped
            else ""
        )
        + ("" if due else ": the zoo is complete")
        + "."
    )
    if not due:
        return line, []
    section = [
        "## Not trained yet",
        "",
        f"This is an intermediate release: {len(due)} of the zoo's {total} networks are not "
        "trained yet, so the comparisons below that need them are missing or partial. "
        "`python -m export zoo --resume` trains them (`make cifar-zoo` for CIFAR-10); `export "
        "pick` then rewrites this report.",
        "",
        "| network | method | architecture | epochs | condition |",
        "|---|---|---|--:|---|",
    ]
    for u in due:
        epochs = "-" if u.epochs is None else f"{u.epochs:g}"
        section.append(
            f"| {u.name} | {u.method} | {u.architecture} | {epochs} | {u.reason or '-'} |"
        )
    return line, [*section, ""]


def progress_of(repo: Path, cards: Sequence[ModelCard]) -> tuple[str, list[str]] | None:
    """``render_progress`` for the config recorded in ``repo``; None when it holds none. A config
    that cannot be read gives a header line that says why (the report is still written)."""
    try:
        config = recorded_config(repo)
    except ZooError as exc:
        return f"- Zoo: {exc}", []
    return None if config is None else render_progress(config, cards)
