"""Subcommands onnx, evaluate, report, pick and verify of ``python -m export``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from export.cli_errors import fail, guard, non_negative_int, positive_int


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
    parser.add_argument("--threads", type=non_negative_int, default=0, help=threads_help)
    parser.add_argument("--provider", default="auto", help="auto, CPUExecutionProvider, ...")
    parser.add_argument(
        "--profile-runs",
        type=positive_int,
        default=50,
        help="timed runs per batch size (default 50)",
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
    from export.repository import (
        EvalData,
        median_profile,
        profile_version,
        remeasure,
        replace_profile,
    )
    from service.contract.model_card import LatencyProfile, model_dirs, read_manifest

    if args.rounds < 1:
        return fail(f"--rounds must be at least 1, got {args.rounds}")
    if args.rounds > 1 and args.accuracy_only:
        return fail("--rounds repeats the latency profile, which --accuracy-only keeps: drop one")
    busy = _training_in(args.repo)
    if busy:
        return fail(
            f"{args.repo}: a zoo is training into it ({', '.join(busy)}): its figures would be "
            "measured beside training and its cards rewritten meanwhile; let it finish, or "
            "pause it first (`python -m export zoo-pause --out REPO`)"
        )
    settings = _profile_settings(args)
    data_cache: dict[str, EvalData] = {}
    dirs = model_dirs(args.repo)
    teacher = find_teacher([read_manifest(d) for d in dirs])
    measured: list[tuple[Path, EvalData, Any, list[LatencyProfile]]] = []
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
        measured.append((model_dir, data_cache[name], replace(settings, threads=threads),
                         [new.profile]))  # fmt: skip
    # Rounds 2..N: every model profiled once more per round, in turn, so that a slow stretch of
    # the machine falls on every model alike; each card keeps the median.
    for round_no in range(2, args.rounds + 1):
        for model_dir, data, model_settings, runs in measured:
            runs.append(profile_version(model_dir, data.images, model_settings))
        print(f"latency round {round_no} of {args.rounds} done")
    for model_dir, _, _, runs in measured if args.rounds > 1 else []:
        new = replace_profile(model_dir, median_profile(runs))
        b1 = sorted(run.rows[0].p50_ms for run in runs)
        last = new.profile.row(32) or new.profile.rows[-1]  # the report's throughput column
        top = sorted(
            r.images_per_s for run in runs for r in run.rows if r.batch_size == last.batch_size
        )
        print(
            f"{new.name}: p50 b1 {new.profile.rows[0].p50_ms:.3f} ms, the median of "
            f"{b1[0]:.3f}-{b1[-1]:.3f} over {len(runs)} rounds; batch {last.batch_size} "
            f"{last.images_per_s:,.0f} images/s, of {top[0]:,.0f}-{top[-1]:,.0f}"
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
    """Serve a zoo's teacher, best of each architecture, Pareto front and `serve` list."""
    from export.pick import pick

    picked = pick(args.zoo, args.into, tuple(args.also or ()), args.config)
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


def register(sub: Any) -> None:
    """Add the onnx, evaluate, report, pick and verify subcommands."""
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
    p.set_defaults(func=guard(cmd_onnx))

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
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="profile every model this many times, round by round, and keep the median of each "
        "figure (default 1: one run each; a shared machine's speed drifts between runs)",
    )
    p.set_defaults(func=guard(cmd_evaluate))

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("repo", type=Path)
    p.set_defaults(func=guard(cmd_report))

    p = sub.add_parser("pick", help=cmd_pick.__doc__, description=cmd_pick.__doc__)
    p.add_argument("zoo", type=Path, help="the zoo's repository (make cifar-zoo's ZOO_DIR)")
    p.add_argument("--into", type=Path, required=True, help="the served repository, e.g. models")
    p.add_argument("--also", nargs="*", help="more zoo models to serve, by name")
    p.add_argument(
        "--config",
        type=Path,
        help="the zoo config the zoo ran (default: the one it recorded, zoo-config.yaml); the "
        "report lists its networks that are not trained yet",
    )
    p.set_defaults(func=guard(cmd_pick))

    p = sub.add_parser("verify", help=cmd_verify.__doc__, description=cmd_verify.__doc__)
    p.add_argument("repo", type=Path)
    p.add_argument("--no-load", action="store_true", help="skip loading in ONNX Runtime")
    p.set_defaults(func=guard(cmd_verify))
