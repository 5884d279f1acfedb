"""Subcommands train and bench of ``python -m export``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from export.cli_errors import fail, float_at_least, positive_int
from export.distill import METHODS
from export.models import ARCHITECTURES, is_architecture

# Flags that map one-to-one onto config keys; None means "not given" (the YAML/default stays).
_OVERRIDES: list[tuple[str, str, Any, str]] = [
    ("--method", "method", str, "baseline, kd, fitnet, fitnet-one-stage, mimic, rocket..."),
    ("--dataset", "dataset", str, "digits (default), cifar10 or imagefolder"),
    ("--data-dir", "data_dir", str, "data folder (cifar10 default: ../shared/datasets/cifar10)"),
    ("--cache-dir", "cache_dir", str, "decoded-image cache (default ~/.cache/rocketserve)"),
    ("--image-size", "image_size", int, "imagefolder: resize every image to this size"),
    ("--student", "student", str, f"student architecture ({', '.join(ARCHITECTURES)})"),
    ("--teacher", "teacher", str, "teacher architecture (trained first) or trained .pt file"),
    ("--teacher-epochs", "teacher_epochs", float, "epochs of a teacher trained in this run"),
    ("--booster", "booster", str, "rocket booster architecture (default: the teacher's)"),
    ("--epochs", "epochs", float, "training epochs (fractions allowed)"),
    ("--max-train-images", "max_train_images", int, "train on a seeded subset of this size"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--optimizer", "optimizer", str, "sgd or adamw"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--momentum", "momentum", float, "SGD momentum"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--schedule", "schedule", str, "onecycle, cosine or constant"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing of cross-entropy"),
    ("--seed", "seed", int, "random seed"),
    ("--temperature", "temperature", float, "KD temperature T"),
    ("--alpha", "alpha", float, "KD weight alpha (1 - alpha on cross-entropy)"),
    ("--hint-weight", "hint_weight", float, "fitnet-one-stage: hint-loss weight"),
    ("--hint-epochs", "hint_epochs", float, "fitnet: stage-1 (hint) epochs (default: epochs/4)"),
    ("--hint-layer", "hint_layer", int, "FitNets student stage index (guided layer)"),
    ("--teacher-hint-layer", "teacher_hint_layer", int, "FitNets teacher stage index (hint)"),
    ("--ce-weight", "ce_weight", float, "mimic: weight of an extra cross-entropy term"),
    ("--lambda", "lambda", float, "rocket hint weight lambda"),
    ("--sharing", "sharing", str, "rocket sharing: bottom, interval or none"),
    (
        "--interval-blocks",
        "interval_blocks",
        int,
        "rocket interval sharing: blocks per stage (default 0: every block of the light net)",
    ),
    ("--kd-weight", "kd_weight", float, "rocket-kd: weight of the KD term"),
    ("--out", "out_dir", str, "run folder (default runs/<method>-<dataset>-<student>)"),
    ("--stop-after", "stop_after", int, "stop after N epochs, leaving a resumable checkpoint"),
    ("--device", "device", str, "auto (default), cpu or cuda"),
    ("--threads", "threads", int, "torch intra-op threads (default: torch's choice)"),
    ("--precision", "precision", str, "fp32 (default), bf16 autocast, or auto (bf16 where native)"),
    ("--recipe", "recipe", str, "one-line description of the recipe for the model card"),
]
_CHOICES = {
    "method": list(METHODS),
    "dataset": ["digits", "cifar10", "imagefolder"],
    "optimizer": ["sgd", "adamw"],
    "schedule": ["onecycle", "cosine", "constant"],
    "sharing": ["bottom", "interval", "none"],
    "device": ["auto", "cpu", "cuda"],
    "precision": ["fp32", "bf16", "auto"],
}
# On/off switches: --joint / --no-joint and so on (never argparse type=bool).
_SWITCHES = [
    ("joint", "rocket: train booster and light net jointly (off: booster first, then frozen)"),
    ("gradient-block", "rocket: the hint loss never updates the booster's own parameters"),
    ("augment", "random crop + flip (default: on for cifar10/imagefolder)"),
    ("nesterov", "Nesterov momentum"),
    ("channels-last", "channels_last memory format (default: on for CPU)"),
    ("progress", "progress bar"),
    ("soft-label-cache", "store the teacher's logits per epoch, shared by runs (default: on)"),
]


def _architecture(name: str) -> str:
    if not is_architecture(name):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not an architecture ({', '.join(ARCHITECTURES)}...)"
        )
    return name


def _user_errors() -> tuple[type[BaseException], ...]:
    from export.checkpoint import ArtifactError
    from export.data import DatasetError
    from export.training.config import ConfigError
    from export.training.loop import ResumeError

    return (ConfigError, DatasetError, ArtifactError, ResumeError, ValueError, OSError)


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config dict of ``args``: the YAML file (if any) with the given flags on top."""
    from export.training.config import load_yaml_config

    config: dict[str, Any] = load_yaml_config(args.config) if args.config else {}
    for _, key, _, _ in _OVERRIDES:
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    for flag, _ in _SWITCHES:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            config[flag.replace("-", "_")] = value
    if args.resume:
        config["resume"] = True
    for key in ("epochs", "teacher_epochs", "hint_epochs"):
        value = config.get(key)
        if isinstance(value, float) and value.is_integer():
            config[key] = int(value)
    return config


def cmd_train(args: argparse.Namespace) -> int:
    """Train a teacher or a student with one of the registered methods."""
    from export.training import run_training
    from export.training.runtime import DistInfo

    try:
        result = run_training(train_config(args))
    except BrokenPipeError:  # the reader went away (`| head`): __main__ stops quietly
        raise
    except _user_errors() as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted; continue with --resume and the same options", 130)
    if DistInfo(rank=int(__import__("os").environ.get("RANK", "0"))).is_main:
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        elif not result.completed:
            print(f"stopped after epoch {result.epochs_done}; continue with --resume")
        else:
            extra = "".join(f"\n  {k}: {v}" for k, v in result.extra_artifacts.items())
            print(
                f"test top-1 {result.test_top1:.2%} after {result.epochs_done} epoch(s), "
                f"{result.wall_time_s:.1f}s of training\n  artifact: {result.artifact_path}{extra}"
            )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Print training img/s of each CIFAR architecture on this machine."""
    from export.bench_train import run_bench

    try:
        run_bench(
            args.archs,
            device_name=args.device,
            batch_size=args.batch_size,
            min_seconds=args.seconds,
            json_out=args.json,
            threads=args.threads,
            precisions=tuple(args.precision),
            profile=args.profile,
            compiled=args.compile,
        )
    except BrokenPipeError:
        raise
    except _user_errors() as exc:
        return fail(str(exc))
    return 0


def register(sub: Any) -> None:
    """Add the train and bench subcommands to an argparse subparsers object."""
    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument("--config", type=Path, help="YAML config (export/configs/*.yaml); flags win")
    for flag, key, kind, text in _OVERRIDES:
        p.add_argument(flag, dest=key, type=kind, default=None, help=text,
                       choices=_CHOICES.get(key))  # fmt: skip
    for flag, text in _SWITCHES:
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=text)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help=cmd_bench.__doc__, description=cmd_bench.__doc__)
    p.add_argument(
        "--archs", nargs="*", type=_architecture, help="default: the CIFAR ones (any name of "
        "a family, e.g. wrn-28-2 or shallow-2-96)"
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--seconds", type=float_at_least(0), default=3.0, help="timed seconds per architecture"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="training precision(s) to time; 'fp32 bf16' also prints the ratio",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile 3 steps and print where their CPU time goes, by kind of work",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time each architecture through torch.compile and print the ratio to eager",
    )
    p.set_defaults(func=cmd_bench)
