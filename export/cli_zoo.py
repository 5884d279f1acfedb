"""Subcommands zoo, zoo-plan, zoo-status, zoo-pause and zoo-continue of ``python -m export``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from export.cli_errors import fail, float_at_least, guard, non_negative_int, positive_int


def cmd_zoo(args: argparse.Namespace) -> int:
    """Train, export, measure and publish the whole zoo of a data set."""
    from export.zoo import ZooOptions, run_zoo

    opts = ZooOptions(
        data_dir=args.data_dir,
        max_epochs=args.max_epochs,
        max_train_images=args.max_train_images,
        profile_runs=args.profile_runs,
        threads=args.threads or None,
        provider=args.provider,
        only=tuple(args.only or ()),
        work_dir=args.work_dir,
        resume=args.resume,
        lanes=args.lanes,
        torch_threads=args.torch_threads,
        report=not args.no_report,
        adopt_from=args.adopt_from,
        train_only=args.train_only,
    )
    result = run_zoo(args.dataset, args.out, opts, config_file=args.config)
    took = f"{result.wall_time_s:.1f}s"
    if opts.train_only:
        print(f"trained in {took}; nothing exported or published (--train-only)")
        return 0
    from export.repository import load_cards

    # What the repository holds: lanes publish from their own processes, and a resumed zoo
    # keeps what it published before, so this process's own cards are not the count.
    print(f"{len(load_cards(args.out))} model versions in {args.out} ({took})")
    return 0


def cmd_zoo_plan(args: argparse.Namespace) -> int:
    """Price every entry of a zoo config in CPU-hours from img/s measured here, before training."""
    from export.data import load_dataset
    from export.zoo import check_entries
    from export.zoo_config import config_path, load_zoo_config
    from export.zoo_plan import architectures, format_plan, measure_rates, plan_record, plan_zoo
    from export.zoo_plan_record import write_plan_record

    path = args.config or config_path(args.dataset)
    config = load_zoo_config(path)
    check_entries(config)
    data = load_dataset(config["dataset"], args.data_dir or config.get("data_dir"))
    defaults = config.get("defaults", {})
    archs = architectures(config)
    rates = measure_rates(
        archs,
        archs[0],
        batch_size=int(defaults.get("batch_size", 128)),
        precision=str(defaults.get("precision", "fp32")),
        seconds=args.seconds,
        image_size=data.image_size,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
    )
    n = len(data.train_images)
    planned = plan_zoo(config, rates, n)
    cores = os.cpu_count() or 1
    print(format_plan(planned, rates, config_file=path, train_images=n, cores=cores))
    if args.out is not None or args.work_dir is not None:
        work = args.work_dir or args.out / ".work"
        saved = write_plan_record(work, plan_record(planned, cores=cores))
        print(f"saved to {saved}: zoo-status prices what is left of the zoo with it")
    return 0


def cmd_zoo_status(args: argparse.Namespace) -> int:
    """Show where a zoo run stands: each entry's epochs, test top-1, img/s and time left."""
    from export.zoo import check_entries
    from export.zoo_config import config_path, load_zoo_config
    from export.zoo_status import format_status, zoo_status

    config = load_zoo_config(args.config or config_path(args.dataset))
    check_entries(config)
    work = _zoo_work(args)
    print(format_status(zoo_status(config, work), work))
    return 0


def cmd_zoo_pause(args: argparse.Namespace) -> int:
    """Pause a running zoo's lanes (for a benchmark or a test suite) without counting the pause
    as training time; `zoo-continue` resumes them."""
    from export.lanes import pause_lanes

    return _report_lanes(args, pause_lanes(_zoo_work(args), wait_s=args.wait), "paused")


def cmd_zoo_continue(args: argparse.Namespace) -> int:
    """Continue the lanes of a zoo paused by `zoo-pause`."""
    from export.lanes import continue_lanes

    return _report_lanes(args, continue_lanes(_zoo_work(args)), "continued")


def _zoo_work(args: argparse.Namespace) -> Path:
    work: Path = args.work_dir or args.out / ".work"
    if not work.is_dir():
        hint = f"has `export zoo --out {args.out}` run?"
        raise FileNotFoundError(f"{work}: no zoo work folder ({hint})")
    return work


def _report_lanes(args: argparse.Namespace, how: dict[str, str], verb: str) -> int:
    if not how:
        return fail(f"{args.out}: no lane of a zoo is running, nothing {verb}")
    for name, what in how.items():
        print(f"{name}: {what}")
    return 0


def register(sub: Any) -> None:
    """Add the zoo, zoo-plan, zoo-status, zoo-pause and zoo-continue subcommands."""
    p = sub.add_parser("zoo", help=cmd_zoo.__doc__, description=cmd_zoo.__doc__)
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--out", type=Path, required=True, help="model repository to write")
    p.add_argument("--data-dir", help="data set folder (cifar10)")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument(
        "--max-epochs", type=float_at_least(1), help="cap every entry's epochs (smoke runs)"
    )
    p.add_argument("--max-train-images", type=positive_int, help="cap the training images")
    p.add_argument(
        "--profile-runs", type=positive_int, help="timed runs per batch size (default: config)"
    )
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="intra-op threads (0: config/all)"
    )
    p.add_argument("--provider", default=None, help="ONNX Runtime provider (default: config)")
    p.add_argument(
        "--only",
        nargs="*",
        help="entries to run (and the teacher, when they distil from it or `teacher_first` is set)",
    )
    p.add_argument("--work-dir", type=Path, help="trained artifacts (default OUT/.work)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted zoo from its checkpoints; keep models already published",
    )
    p.add_argument(
        "--lanes",
        type=positive_int,
        default=1,
        help="train the entries in this many parallel processes, each with its share of the "
        "cores and its own log in the work dir, each once its prerequisites are done (a "
        "distilled student waits for the teacher) (default 1: one after another)",
    )
    p.add_argument(
        "--torch-threads", type=positive_int, help="torch intra-op threads (default: config)"
    )
    p.add_argument("--no-report", action="store_true", help="do not write REPORT.md at the end")
    p.add_argument(
        "--adopt-from",
        type=Path,
        help="with --resume: a model repository (e.g. models/) whose networks trained to this "
        "zoo's recipes are rebuilt from their ONNX files instead of trained again, when the work "
        "dir lacks them (a lost work folder retrains only what the repository does not hold)",
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train every entry (second seeds unconditionally) and stop: no export, measurement "
        "or publishing. For an accelerator machine: copy the work dir back and resume the zoo on "
        "the serving machine, which exports, measures and publishes the finished runs",
    )
    p.set_defaults(func=guard(cmd_zoo))

    p = sub.add_parser("zoo-plan", help=cmd_zoo_plan.__doc__, description=cmd_zoo_plan.__doc__)
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--data-dir", help="data set folder (cifar10)")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument(
        "--seconds", type=float_at_least(0), default=8.0, help="timed seconds per architecture"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="the zoo's model repository: save the plan in its work folder, where zoo-status "
        "reads it to price what is left (default: print only)",
    )
    p.add_argument("--work-dir", type=Path, help="the zoo's work folder (default OUT/.work)")
    p.set_defaults(func=guard(cmd_zoo_plan))

    p = sub.add_parser(
        "zoo-status", help=cmd_zoo_status.__doc__, description=cmd_zoo_status.__doc__
    )
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--out", type=Path, required=True, help="the zoo's model repository")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument("--work-dir", type=Path, help="trained artifacts (default OUT/.work)")
    p.set_defaults(func=guard(cmd_zoo_status))

    for name, func in (("zoo-pause", cmd_zoo_pause), ("zoo-continue", cmd_zoo_continue)):
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        p.add_argument("--out", type=Path, required=True, help="the zoo's model repository")
        p.add_argument("--work-dir", type=Path, help="trained artifacts (default OUT/.work)")
        if func is cmd_zoo_pause:
            p.add_argument(
                "--wait",
                type=float_at_least(0),
                default=60.0,
                help="seconds to wait for each lane to pause itself before SIGSTOP (default 60)",
            )
        p.set_defaults(func=guard(func))
