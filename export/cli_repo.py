"""Subcommands onnx, evaluate, verify and zoo of ``python -m export``."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from service.contract.model_card import ModelRepositoryError

# Errors a user can cause (bad paths, bad data, failed parity): one line, non-zero exit.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    ModelRepositoryError,
    OSError,
    ValueError,
    RuntimeError,
    yaml.YAMLError,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-facing error types, including those of the training half when importable."""
    extra: list[type[BaseException]] = []
    try:
        from export.checkpoint import ArtifactError
        from export.data import DatasetError

        extra += [ArtifactError, DatasetError]
    except ImportError:  # pragma: no cover - training half not installed
        pass
    return (*_USER_ERRORS, *extra)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _profile_settings(args: argparse.Namespace) -> Any:
    from export.evaluate import default_threads, machine_description, pick_provider
    from export.repository import ProfileSettings

    return ProfileSettings(
        provider=pick_provider(args.provider),
        threads=args.threads or default_threads(),
        machine=machine_description(),
        min_runs=args.profile_runs,
        min_seconds=0.3 if args.profile_runs >= 50 else 0.0,
    )


def _add_profile_args(
    parser: argparse.ArgumentParser, threads_help: str = "intra-op threads (0: all cores)"
) -> None:
    parser.add_argument("--threads", type=int, default=0, help=threads_help)
    parser.add_argument("--provider", default="auto", help="auto, CPUExecutionProvider, ...")
    parser.add_argument(
        "--profile-runs", type=int, default=50, help="timed runs per batch size (default 50)"
    )


def cmd_onnx(args: argparse.Namespace) -> int:
    """Export a trained artifact to ONNX with a parity check; optionally publish it."""
    from export.checkpoint import load_trained
    from export.data import load_dataset
    from export.onnx_export import export_with_parity
    from export.quantize import make_variant
    from export.repository import ArtifactInfo, EvalData, publish, training_info
    from service.contract.model_card import InputSpec

    model, meta = load_trained(args.checkpoint)
    splits = load_dataset(meta.dataset, args.data_dir or meta.config.get("data_dir"))
    spec = InputSpec.model_validate(meta.input_spec)
    out = args.out or Path(args.checkpoint).with_suffix(".onnx")
    report = export_with_parity(
        model, out, spec, splits.test_images, opset=args.opset, atol=args.atol
    )
    print(f"{out}: {report.summary()}")
    if args.repo is None:
        return 0
    name = args.name or f"{meta.dataset}-{meta.method}-{meta.arch}".lower()
    info = ArtifactInfo(
        name=name, labels=tuple(meta.labels), input=spec, training=training_info(meta)
    )
    data = EvalData(meta.dataset, splits.test_images, splits.test_labels)
    settings = _profile_settings(args)
    jobs = [(info, out)]
    for precision in args.variants:
        variant = out.with_name(f"{out.stem}-{precision}.onnx")
        make_variant(precision, out, variant, splits.train_images, spec)
        derived = replace(info, name=f"{name}-{precision}", precision=precision, derived_from=name)
        jobs.append((derived, variant))
    for job_info, path in jobs:
        card = publish(args.repo, job_info, path, data, settings)
        print(f"{args.repo / card.name}: version {card.version}, top-1 {card.metrics.top1:.2%}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-measure every model of a repository; rewrite its manifests and the report."""
    from export.data import load_dataset
    from export.report import find_teacher
    from export.repository import EvalData, remeasure
    from service.contract.model_card import model_dirs, read_manifest

    busy = _training_in(args.repo)
    if busy:
        return _fail(
            f"{args.repo}: a zoo is training into it ({', '.join(busy)}): its figures would be "
            "measured beside training and its cards rewritten meanwhile; let it finish, or "
            "pause it first (`python -m export zoo-pause --out REPO`)"
        )
    settings = _profile_settings(args)
    data_cache: dict[str, EvalData] = {}
    dirs = model_dirs(args.repo)
    teacher = find_teacher([read_manifest(d) for d in dirs])
    for model_dir in dirs:
        card = read_manifest(model_dir)
        name = card.metrics.dataset
        if name not in data_cache:
            splits = load_dataset(name, args.data_dir or card.training.config.get("data_dir"))
            data_cache[name] = EvalData(name, splits.test_images, splits.test_labels)
        # Without --threads, keep each card's thread count so old and new figures compare.
        threads = args.threads or card.profile.threads or settings.threads
        new = remeasure(
            model_dir,
            data_cache[name],
            replace(settings, threads=threads),
            teacher.name if teacher else None,
            profile=not args.accuracy_only,
        )
        print(
            f"{new.name}: top-1 {card.metrics.top1:.2%} -> {new.metrics.top1:.2%}, "
            f"p50 b1 {card.profile.rows[0].p50_ms:.3f} -> {new.profile.rows[0].p50_ms:.3f} ms"
        )
    return _rewrite_report(args.repo)


def _training_in(repo: Path) -> list[str]:
    """The entries a zoo's lanes train into ``repo`` right now, paused ones left out."""
    from export.lanes import paused_entries, running_entries

    work = repo / ".work"
    if not work.is_dir():
        return []
    return sorted(set(running_entries(work)) - paused_entries(work))


def _rewrite_report(repo: Path) -> int:
    from export.pick import report_cards
    from export.report import write_report

    cards, served = report_cards(repo)
    dataset = ", ".join(sorted({c.metrics.dataset for c in cards}))
    if len(cards) > len(served):  # a picked repository: the report covers the whole zoo
        title = f"Model zoo: {dataset} ({len(cards)} models trained, {len(served)} served)"
        report, pareto = write_report(repo, cards, title, served=served)
    else:
        report, pareto = write_report(repo, cards, f"Model zoo: {dataset}")
    print(f"wrote {report} and {pareto}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rewrite a repository's REPORT.md and pareto.png from its cards, measuring nothing."""
    return _rewrite_report(args.repo)


def cmd_pick(args: argparse.Namespace) -> int:
    """Serve the teacher, each architecture's best network and the Pareto front of a zoo."""
    from export.pick import pick

    picked = pick(args.zoo, args.into, tuple(args.also or ()))
    for name, reason in sorted(picked.reasons.items()):
        print(f"{name}: {reason}")
    print(f"{args.into}: {len(picked.reasons)} models served, REPORT.md covers the whole zoo")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check schema, hashes, version folders and that every version loads in ONNX Runtime."""
    from export.repository import verify_repository

    n_models, n_versions, problems = verify_repository(args.repo, load=not args.no_load)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.repo}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.repo}: ok ({n_models} models, {n_versions} versions)")
    return 0


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
    )
    result = run_zoo(args.dataset, args.out, opts, config_file=args.config)
    print(f"{len(result.cards)} model versions in {args.out} ({result.wall_time_s:.1f}s)")
    return 0


def cmd_zoo_plan(args: argparse.Namespace) -> int:
    """Price every entry of a zoo config in CPU-hours from img/s measured here, before training."""
    from export.data import load_dataset
    from export.zoo import config_path, load_zoo_config
    from export.zoo_plan import architectures, format_plan, measure_rates, plan_zoo

    path = args.config or config_path(args.dataset)
    config = load_zoo_config(path)
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
    return 0


def cmd_zoo_status(args: argparse.Namespace) -> int:
    """Show where a zoo run stands: each entry's epochs, test top-1, img/s and time left."""
    from export.zoo import config_path, load_zoo_config
    from export.zoo_status import format_status, zoo_status

    config = load_zoo_config(args.config or config_path(args.dataset))
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
        return _fail(f"{args.out}: no lane of a zoo is running, nothing {verb}")
    for name, what in how.items():
        print(f"{name}: {what}")
    return 0


def _guard(func: Any) -> Any:
    """Turn expected errors into a one-line message and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except BrokenPipeError:  # the reader went away (`| head`): __main__ stops quietly
            raise
        except _user_errors() as exc:
            return _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))

    run.__doc__ = func.__doc__
    return run


def register(sub: Any) -> None:
    """Add the onnx, evaluate, report, pick, verify and zoo-* subcommands."""
    p = sub.add_parser("onnx", help=cmd_onnx.__doc__, description=cmd_onnx.__doc__)
    p.add_argument("checkpoint", type=Path, help="trained artifact (export.checkpoint)")
    p.add_argument("--out", type=Path, help="ONNX file to write (default: beside the artifact)")
    p.add_argument("--data-dir", help="data set folder (default: from the artifact's config)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--atol", type=float, default=1e-4, help="max |logit diff| allowed")
    p.add_argument("--repo", type=Path, help="also measure and publish into this repository")
    p.add_argument("--name", help="model name in the repository")
    p.add_argument(
        "--variants", nargs="*", default=[], choices=["int8", "fp16"], help="with --repo"
    )
    _add_profile_args(p)
    p.set_defaults(func=_guard(cmd_onnx))

    p = sub.add_parser("evaluate", help=cmd_evaluate.__doc__, description=cmd_evaluate.__doc__)
    p.add_argument("repo", type=Path)
    p.add_argument("--data-dir", help="data set folder (default: from each card's config)")
    _add_profile_args(p, "intra-op threads (0: as each card was measured)")
    p.add_argument(
        "--accuracy-only",
        action="store_true",
        help="re-measure the accuracy figures (top-1, top-5, agreement, calibration) and keep "
        "each card's latency profile: for a figure the cards lack, on a busy machine",
    )
    p.set_defaults(func=_guard(cmd_evaluate))

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("repo", type=Path)
    p.set_defaults(func=_guard(cmd_report))

    p = sub.add_parser("pick", help=cmd_pick.__doc__, description=cmd_pick.__doc__)
    p.add_argument("zoo", type=Path, help="the zoo's repository (make cifar-zoo's ZOO_DIR)")
    p.add_argument("--into", type=Path, required=True, help="the served repository, e.g. models")
    p.add_argument("--also", nargs="*", help="more zoo models to serve, by name")
    p.set_defaults(func=_guard(cmd_pick))

    p = sub.add_parser("verify", help=cmd_verify.__doc__, description=cmd_verify.__doc__)
    p.add_argument("repo", type=Path)
    p.add_argument("--no-load", action="store_true", help="skip loading in ONNX Runtime")
    p.set_defaults(func=_guard(cmd_verify))

    p = sub.add_parser("zoo", help=cmd_zoo.__doc__, description=cmd_zoo.__doc__)
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--out", type=Path, required=True, help="model repository to write")
    p.add_argument("--data-dir", help="data set folder (cifar10)")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument("--max-epochs", type=float, help="cap every entry's epochs (smoke runs)")
    p.add_argument("--max-train-images", type=int, help="cap the training images")
    p.add_argument("--profile-runs", type=int, help="timed runs per batch size (default: config)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: config/all)")
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
        type=int,
        default=1,
        help="train the entries in this many parallel processes, each with its share of the "
        "cores and its own log in the work dir, each once its prerequisites are done (a "
        "distilled student waits for the teacher) (default 1: one after another)",
    )
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads (default: config)")
    p.add_argument("--no-report", action="store_true", help="do not write REPORT.md at the end")
    p.set_defaults(func=_guard(cmd_zoo))

    p = sub.add_parser("zoo-plan", help=cmd_zoo_plan.__doc__, description=cmd_zoo_plan.__doc__)
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--data-dir", help="data set folder (cifar10)")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per architecture")
    p.set_defaults(func=_guard(cmd_zoo_plan))

    p = sub.add_parser(
        "zoo-status", help=cmd_zoo_status.__doc__, description=cmd_zoo_status.__doc__
    )
    p.add_argument("--dataset", required=True, choices=["digits", "cifar10"])
    p.add_argument("--out", type=Path, required=True, help="the zoo's model repository")
    p.add_argument("--config", type=Path, help="zoo YAML (default export/configs/zoo-<dataset>)")
    p.add_argument("--work-dir", type=Path, help="trained artifacts (default OUT/.work)")
    p.set_defaults(func=_guard(cmd_zoo_status))

    for name, func in (("zoo-pause", cmd_zoo_pause), ("zoo-continue", cmd_zoo_continue)):
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        p.add_argument("--out", type=Path, required=True, help="the zoo's model repository")
        p.add_argument("--work-dir", type=Path, help="trained artifacts (default OUT/.work)")
        if func is cmd_zoo_pause:
            p.add_argument(
                "--wait",
                type=float,
                default=60.0,
                help="seconds to wait for each lane to pause itself before SIGSTOP (default 60)",
            )
        p.set_defaults(func=_guard(func))
