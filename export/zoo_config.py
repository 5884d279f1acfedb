"""A zoo's YAML config: loading and checks, entry names, prerequisites, second-seed conditions."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from export.noise import gap, group_runs
from export.training.config import yaml_problem
from service.contract.model_card import ModelCard

# Keys of a zoo entry that belong to the zoo, not to the training config.
ZOO_KEYS = {"name", "variants", "second_seed_of", "when_within_noise_of"}
# The value of an entry's ``teacher`` that means "the teacher this zoo trained first".
ZOO_TEACHER = "zoo"


class ZooError(RuntimeError):
    """The zoo config is invalid or a stage of the zoo failed."""


def config_path(dataset: str) -> Path:
    """The packaged zoo config of a data set (export/configs/zoo-<dataset>.yaml)."""
    path = Path(str(resources.files("export") / "configs" / f"zoo-{dataset}.yaml"))
    if not path.is_file():
        raise ZooError(f"no zoo config for dataset {dataset!r} (looked for {path})")
    return path


def load_zoo_config(path: Path) -> dict[str, Any]:
    """Read and sanity-check a zoo YAML config."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ZooError(f"{path}: cannot read zoo config ({exc})") from None
    except yaml.YAMLError as exc:
        raise ZooError(f"{path}: cannot read zoo config: {yaml_problem(exc)}") from None
    if not isinstance(config, dict):
        raise ZooError(f"{path}: a zoo config is a mapping")
    for key in ("dataset", "teacher", "students"):
        if key not in config:
            raise ZooError(f"{path}: missing key {key!r}")
    if not isinstance(config.get("teacher_first", False), bool):
        raise ZooError(f"{path}: teacher_first is true or false")
    entries = [config["teacher"], *config["students"]]
    names = [e.get("name") for e in entries if isinstance(e, dict)]
    if len(names) != len(entries) or not all(names):
        raise ZooError(f"{path}: every teacher/student entry needs a 'name'")
    if len(set(names)) != len(names):
        raise ZooError(f"{path}: entry names must be unique")
    serve = config.get("serve", [])
    if not isinstance(serve, list) or not all(isinstance(n, str) for n in serve):
        raise ZooError(f"{path}: serve is a list of entry names")
    unknown_served = [n for n in serve if n not in names]
    if unknown_served:
        raise ZooError(f"{path}: serve names no zoo entry {unknown_served[0]!r}")
    for entry in entries:
        named = [entry.get("second_seed_of"), *(entry.get("when_within_noise_of") or [])]
        unknown = [n for n in named if n is not None and n not in names]
        if unknown:
            raise ZooError(f"{path}: {entry['name']} names no zoo entry {unknown[0]!r}")
        if bool(entry.get("second_seed_of")) != bool(entry.get("when_within_noise_of")):
            raise ZooError(
                f"{path}: {entry['name']}: second_seed_of and when_within_noise_of go together"
            )
    return config


def second_seed_reason(
    entry: dict[str, Any], cards: list[ModelCard], model_name: Callable[[str], str]
) -> tuple[bool, str]:
    """Whether a conditional second-seed entry should train, and why.

    An entry with ``second_seed_of: X`` and ``when_within_noise_of: [Y, ...]`` trains only when
    X's gap to some Y is within test-set noise (or cannot be read yet: a card is missing), as the
    report's reading would ask for a second seed there; otherwise it is skipped. The gap is read
    between the first seeds (the entries named), whatever seeds exist already.
    """
    first, rivals = entry.get("second_seed_of"), entry.get("when_within_noise_of") or []
    if not first or not rivals:
        return True, "unconditional"
    latest: dict[str, ModelCard] = {}
    for card in cards:
        before = latest.get(card.name)
        if card.derived_from is None and (before is None or card.version >= before.version):
            latest[card.name] = card
    own = latest.get(model_name(str(first)))
    if own is None:
        return True, f"{first} has no card yet"
    readings = []
    for rival in rivals:
        other = latest.get(model_name(str(rival)))
        if other is None:
            return True, f"{rival} has no card yet"
        g = gap(group_runs([other]), group_runs([own]))
        reading = f"{first} vs {rival}: {g.points:+.2f} points ({g.noise})"
        if not g.beyond_noise:
            return True, reading + ", within noise"
        readings.append(reading)
    return False, "; ".join(readings) + ", beyond noise: no second seed needed"


def model_name(dataset: str, entry_name: str) -> str:
    """Repository name of a zoo entry: ``<dataset>-<entry name>``, lower-case."""
    return f"{dataset}-{entry_name}".lower()


def needs_teacher(entry: dict[str, Any]) -> bool:
    """Whether an entry distils from the teacher this zoo trains."""
    return entry.get("teacher") == ZOO_TEACHER


def prerequisites(
    entry: dict[str, Any], config: dict[str, Any], *, train_only: bool = False
) -> list[str]:
    """The entries that must be done before ``entry`` starts: the zoo's teacher for a distilled
    student (for every student with ``teacher_first: true``), the compared entries for a
    conditional second seed (not when only training: it then trains whatever they score)."""
    teacher = str(config["teacher"]["name"])
    if entry.get("name") == teacher:
        return []
    named = [teacher] * (needs_teacher(entry) or bool(config.get("teacher_first")))
    if entry.get("second_seed_of") and not train_only:
        named += [str(entry["second_seed_of"]), *map(str, entry.get("when_within_noise_of") or [])]
    return list(dict.fromkeys(named))
