"""Training configs: defaults, YAML loading (safe_load only) and validation with clear errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from export.distill import METHODS
from export.models import ARCHITECTURES, is_architecture


class ConfigError(ValueError):
    """A training config has an unknown key, a wrong type or an impossible combination."""


# Every key a config may hold, with its default. None means "unset / decided at run time".
DEFAULTS: dict[str, Any] = {
    # what to train
    "method": "baseline",
    "dataset": "digits",
    "data_dir": None,
    "cache_dir": None,
    "image_size": None,  # imagefolder only: resize every image to this size
    "color": "rgb",  # imagefolder only: rgb or gray
    "student": "wrn-16-1",
    "teacher": None,  # architecture (trained first, in this run) or path of a trained artifact
    "teacher_epochs": None,  # epochs of a teacher trained in this run (default: epochs)
    "booster": None,  # rocket: booster architecture (default: the teacher's architecture)
    # budget and optimisation
    "epochs": 10.0,
    "max_train_images": None,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "onecycle",
    "warmup_fraction": 0.15,
    "label_smoothing": 0.0,
    "augment": None,  # default: on for cifar10/imagefolder, off for digits
    "seed": 0,
    # method options
    "temperature": 4.0,
    "alpha": 0.9,
    "hint_weight": 2.0,  # fitnet-one-stage
    "hint_epochs": None,  # fitnet: epochs of stage 1 (hints), part of epochs (default: a quarter)
    "hint_layer": None,
    "teacher_hint_layer": None,
    "ce_weight": 0.0,
    "lambda": 0.03,
    "sharing": "bottom",
    "interval_blocks": 0,  # interval sharing: the first N blocks per stage; 0: all the light's
    "joint": True,
    "gradient_block": True,
    "kd_weight": 1.0,
    # run control
    "out_dir": None,  # default: runs/<method>-<dataset>-<student>
    "resume": False,
    "stop_after": None,  # stop after this many epochs, leaving a resumable checkpoint
    # also checkpoint inside an epoch once this many minutes passed since the last save, so a
    # stopped long epoch resumes at its last saved step (0: after every step; None: epochs only)
    "checkpoint_minutes": 10.0,
    "device": "auto",
    "threads": None,  # torch intra-op threads (default: torch's choice)
    "channels_last": None,  # default: on for CPU
    # bf16: autocast forward/backward (AMX/AVX512-BF16 CPUs, recent GPUs); auto: bf16 where the
    # device computes it natively, else fp32 (emulated bf16 on an AVX2 CPU is ~10x slower)
    "precision": "fp32",
    # KD, MIMIC, FitNets stage 2, Rocket+KD: store the teacher's logits per epoch beside the
    # teacher and share them between runs on the same data stream (export/training/soft_labels.py)
    "soft_label_cache": True,
    "progress": True,
    "recipe": None,
}

_TYPES: dict[str, tuple[type, ...]] = {
    "epochs": (int, float),
    "lr": (int, float),
    "momentum": (int, float),
    "weight_decay": (int, float),
    "warmup_fraction": (int, float),
    "label_smoothing": (int, float),
    "temperature": (int, float),
    "alpha": (int, float),
    "hint_weight": (int, float),
    "ce_weight": (int, float),
    "lambda": (int, float),
    "kd_weight": (int, float),
    "batch_size": (int,),
    "seed": (int,),
    "interval_blocks": (int,),
    "nesterov": (bool,),
    "joint": (bool,),
    "gradient_block": (bool,),
    "resume": (bool,),
    "progress": (bool,),
    "soft_label_cache": (bool,),
}
_OPTIONAL_INT = (
    "max_train_images",
    "image_size",
    "hint_layer",
    "teacher_hint_layer",
    "stop_after",
    "threads",
)
_OPTIONAL_NUMBER = ("teacher_epochs", "hint_epochs", "checkpoint_minutes")
_OPTIONAL_BOOL = ("augment", "channels_last")
_OPTIONAL_STR = ("data_dir", "cache_dir", "teacher", "booster", "out_dir", "recipe")
# Weights and rates that may be 0 (the term or the feature off) but never negative.
_NON_NEGATIVE = ("momentum", "weight_decay", "kd_weight", "hint_weight", "ce_weight")
_CHOICES = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("onecycle", "cosine", "constant"),
    "sharing": ("bottom", "interval", "none"),
    "color": ("rgb", "gray"),
    "dataset": ("digits", "cifar10", "imagefolder"),
    "precision": ("fp32", "bf16", "auto"),
}
ROCKET_METHODS = ("rocket", "rocket-kd")
TEACHER_METHODS = ("kd", "fitnet", "fitnet-one-stage", "fitnet-hints", "mimic", "rocket-kd")
HINT_STAGE_FRACTION = 0.25  # fitnet's default share of the epochs spent on stage 1


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with yaml.safe_load (no tags, no code)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and on which line (1-based), without the excerpt."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None or not exc.problem:
        lines = str(exc).strip().splitlines()
        return f"invalid YAML: {lines[0] if lines else type(exc).__name__}"
    text = f"invalid YAML on line {exc.problem_mark.line + 1}: {exc.problem}"
    if exc.context and exc.context_mark is not None:
        text += f" ({exc.context} from line {exc.context_mark.line + 1})"
    return text


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int in Python; never accept it as a number
    return isinstance(value, types)


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``config``, type-checked; raises ConfigError naming the bad key."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    cfg = {**DEFAULTS, **config}
    for key, types in _TYPES.items():
        if not _is_type(cfg[key], types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"{key} must be {names}, got {cfg[key]!r}")
    for key in _OPTIONAL_INT:
        if cfg[key] is not None and not _is_type(cfg[key], (int,)):
            raise ConfigError(f"{key} must be an integer, got {cfg[key]!r}")
    for key in _OPTIONAL_NUMBER:
        if cfg[key] is not None and not _is_type(cfg[key], (int, float)):
            raise ConfigError(f"{key} must be a number, got {cfg[key]!r}")
    for key in _OPTIONAL_BOOL:
        if cfg[key] is not None and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    for key in _OPTIONAL_STR:
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise ConfigError(f"{key} must be a string, got {cfg[key]!r}")
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    if cfg["method"] not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {cfg['method']!r}")
    _check_ranges(cfg)
    _check_method(cfg)
    if cfg["method"] == "fitnet":
        cfg["hint_epochs"] = _hint_epochs(cfg)
    return cfg


def _hint_epochs(cfg: dict[str, Any]) -> int | float:
    """fitnet's stage-1 epochs: given, or a quarter of the run's; stage 2 gets the rest."""
    hint = cfg["hint_epochs"]
    if hint is None:
        hint = cfg["epochs"] * HINT_STAGE_FRACTION
    if not 0 < hint < cfg["epochs"]:
        raise ConfigError(
            f"hint_epochs must be in (0, epochs={cfg['epochs']}): stage 1 (hints) takes "
            f"hint_epochs of the run's epochs and stage 2 (KD) the rest, got {hint!r}"
        )
    return int(hint) if float(hint).is_integer() else hint


def _check_ranges(cfg: dict[str, Any]) -> None:
    for key in (*_TYPES, *_OPTIONAL_NUMBER):
        if isinstance(cfg[key], float) and not math.isfinite(cfg[key]):
            raise ConfigError(f"{key} must be a finite number, got {cfg[key]!r}")
    checks = [
        ("epochs", cfg["epochs"] > 0, "must be positive"),
        ("batch_size", cfg["batch_size"] >= 2, "must be at least 2"),
        ("lr", cfg["lr"] > 0, "must be positive"),
        ("temperature", cfg["temperature"] > 0, "must be positive"),
        ("alpha", 0 <= cfg["alpha"] <= 1, "must be in [0, 1]"),
        ("lambda", cfg["lambda"] >= 0, "must be >= 0"),
        ("label_smoothing", 0 <= cfg["label_smoothing"] < 1, "must be in [0, 1)"),
        ("warmup_fraction", 0 < cfg["warmup_fraction"] < 1, "must be in (0, 1)"),
        ("interval_blocks", cfg["interval_blocks"] >= 0, "must be >= 0 (0: every light block)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key} {why}, got {cfg[key]!r}")
    for key in ("max_train_images", "stop_after", "image_size", "threads"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]!r}")
    if cfg["teacher_epochs"] is not None and cfg["teacher_epochs"] <= 0:
        raise ConfigError(f"teacher_epochs must be positive, got {cfg['teacher_epochs']!r}")
    for key in (*_NON_NEGATIVE, "checkpoint_minutes"):
        if cfg[key] is not None and cfg[key] < 0:
            raise ConfigError(f"{key} must be >= 0, got {cfg[key]!r}")


def _check_method(cfg: dict[str, Any]) -> None:
    method = cfg["method"]
    for key in ("student", "booster"):
        if cfg[key] is not None and not is_architecture(str(cfg[key])):
            known = ", ".join(ARCHITECTURES)
            raise ConfigError(f"{key} {cfg[key]!r} is not an architecture: choose one of {known}")
    if method in TEACHER_METHODS and not cfg["teacher"]:
        raise ConfigError(f"method {method} needs a teacher (an architecture or a trained .pt)")
    if method in ROCKET_METHODS and not (cfg["booster"] or cfg["teacher"]):
        raise ConfigError(f"method {method} needs a booster architecture (booster or teacher)")


def default_out_dir(cfg: dict[str, Any]) -> Path:
    """runs/<method>-<dataset>-<student>."""
    return Path("runs") / f"{cfg['method']}-{cfg['dataset']}-{cfg['student']}"


FINGERPRINT_IGNORES = (
    "resume",
    "stop_after",
    "progress",
    "out_dir",
    "device",
    "cache_dir",
    "threads",
    "soft_label_cache",  # where the teacher's logits come from, not what they are
    "checkpoint_minutes",
    "precision",  # how the arithmetic runs, like device: the weights stay fp32 either way
)


def fingerprint(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match for a run to be resumed."""
    return {k: v for k, v in cfg.items() if k not in FINGERPRINT_IGNORES}


def _bearing(fp: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint without the options its run never reads: ``interval_blocks`` counts only for
    Rocket with interval sharing (its default changed from 1 to 0 when interval sharing came to
    share every light block, as the authors' code does; other runs must not restart for it)."""
    interval = fp.get("method") in ("rocket", "rocket-kd") and fp.get("sharing") == "interval"
    return fp if interval else {k: v for k, v in fp.items() if k != "interval_blocks"}


def fingerprint_changes(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, among the options the run reads.
    An option added since ``old`` was written reads as unset (None) there, so a new option left
    at its unset default does not stop a long run from resuming."""
    new, old = _bearing(new), _bearing(old)
    return sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
