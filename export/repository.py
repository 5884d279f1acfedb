"""Write measured model versions into a model repository and verify a repository on disk."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.complexity import count_complexity
from export.evaluate import evaluate_accuracy, make_session, profile_latency
from export.teacher_answers import TeacherAnswers
from service.contract.model_card import (
    MANIFEST_FILENAME,
    EpochRecord,
    InputSpec,
    LatencyProfile,
    ModelCard,
    ModelRepositoryError,
    OutputSpec,
    ProfileRow,
    TrainingInfo,
    VersionRecord,
    model_dirs,
    model_file,
    read_manifest,
    sha256_file,
    utc_now,
    validate_model_name,
    version_dirs,
    write_manifest,
)


@dataclass(frozen=True)
class ArtifactInfo:
    """What the offline stage knows about an ONNX artifact before it is measured."""

    name: str
    labels: tuple[str, ...]
    input: InputSpec
    training: TrainingInfo
    precision: str = "fp32"
    derived_from: str | None = None
    output_name: str = "logits"
    # The teacher's ONNX file and input spec, to measure the agreement with it on the split.
    teacher: tuple[Path, InputSpec] | None = None


@dataclass(frozen=True)
class EvalData:
    """The test split every artifact of one data set is measured on (uint8 [N,H,W,C]), and the
    teachers' answers on it (each teacher runs over the split once, not once per student)."""

    dataset: str
    images: np.ndarray
    labels: np.ndarray
    split: str = "test"
    answers: TeacherAnswers = field(default_factory=TeacherAnswers, compare=False, repr=False)


@dataclass(frozen=True)
class ProfileSettings:
    """Where and how latency is measured."""

    provider: str = "CPUExecutionProvider"
    threads: int = 1
    machine: str = ""
    min_runs: int = 50
    min_seconds: float = 0.3


def training_info(meta: Any) -> TrainingInfo:
    """The card's ``training`` block from a trained artifact's TrainedMeta."""
    return TrainingInfo(
        method=meta.method,
        architecture=meta.arch,
        teacher=meta.teacher,
        dataset=meta.dataset,
        epochs=float(meta.epochs),
        seed=int(meta.seed),
        config=dict(meta.config),
        wall_time_s=float(meta.wall_time_s),
        device=meta.device,
        recipe=meta.recipe,
        history=epoch_records(getattr(meta, "history", None) or []),
    )


def epoch_records(history: list[dict[str, Any]]) -> tuple[EpochRecord, ...]:
    """The card's learning curve from the trainer's epoch records (export/training/loop.py),
    keeping the fields a card states; the per-method loss terms stay in the run's log."""
    fields = EpochRecord.model_fields
    return tuple(
        EpochRecord.model_validate({k: v for k, v in record.items() if k in fields})
        for record in history
    )


def measured_fields(
    path: Path,
    spec: InputSpec,
    data: EvalData,
    settings: ProfileSettings,
    teacher: tuple[Path, InputSpec] | None = None,
    *,
    profile: bool = True,
) -> dict[str, Any]:
    """Every figure of a card that is measured on the ONNX file at ``path`` (and, given the
    teacher's file and input spec, its agreement with the teacher on the split); without
    ``profile``, every figure but the latency profile."""
    session = make_session(path, settings.provider, settings.threads)
    complexity = count_complexity(path)
    teacher_top1 = None
    if teacher is not None:
        teacher_top1 = data.answers.top1(
            teacher[0],
            teacher[1],
            data.images,
            provider=settings.provider,
            threads=settings.threads,
        )
    metrics = evaluate_accuracy(
        session,
        spec,
        data.images,
        data.labels,
        dataset=data.dataset,
        split=data.split,
        teacher_top1=teacher_top1,
    )
    fields: dict[str, Any] = {
        "metrics": metrics,
        "params": complexity.params,
        "macs": complexity.macs,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    if profile:
        fields["profile"] = _profile(session, spec, data.images, settings)
    return fields


def _profile(
    session: Any, spec: InputSpec, images: np.ndarray, settings: ProfileSettings
) -> LatencyProfile:
    return profile_latency(
        session,
        spec,
        images,
        threads=settings.threads,
        min_runs=settings.min_runs,
        min_seconds=settings.min_seconds,
        machine=settings.machine or None,
    )


def profile_version(
    model_dir: Path, images: np.ndarray, settings: ProfileSettings
) -> LatencyProfile:
    """The latency profile of the version the card in ``model_dir`` describes, measured again
    (the card is left as it is)."""
    card = read_manifest(model_dir)
    session = make_session(model_file(model_dir, card.version), settings.provider, settings.threads)
    return _profile(session, card.input, images, settings)


def median_profile(runs: Sequence[LatencyProfile]) -> LatencyProfile:
    """One profile from interleaved rounds of the same version: per batch size, the median of
    the rounds' p50 and of their p99, and the images/s of that p50. A shared machine slows one
    round and not the next (WRN-16-1 int8 at batch 32 measured 4,300 to 9,200 images/s round to
    round on one 2-core host): a single run would rank equal files by the luck of their turn."""
    if not runs:
        raise ValueError("no profile to merge")
    sizes = [r.batch_size for r in runs[0].rows]
    rows = []
    for bs in sizes:
        found = [row for row in (p.row(bs) for p in runs) if row is not None]
        p50 = float(np.median([r.p50_ms for r in found]))
        p99 = float(np.median([r.p99_ms for r in found]))
        rows.append(ProfileRow(batch_size=bs, p50_ms=p50, p99_ms=p99,
                               images_per_s=bs * 1000.0 / p50 if p50 > 0 else 0.0))  # fmt: skip
    return runs[0].model_copy(update={"rows": tuple(rows), "rounds": len(runs)})


def replace_profile(model_dir: Path, profile: LatencyProfile) -> ModelCard:
    """Rewrite the card in ``model_dir`` (and its version's own card) with ``profile``."""
    return _rewrite_card(model_dir, read_manifest(model_dir), {"profile": profile})


def next_version(model_dir: Path) -> int:
    """One more than the highest version folder (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    return max(version_dirs(model_dir), default=0) + 1


def publish(
    repo: Path, info: ArtifactInfo, onnx_src: Path, data: EvalData, settings: ProfileSettings
) -> ModelCard:
    """Measure ``onnx_src``, copy it in (hash-checked) as the next version, write its card."""
    validate_model_name(info.name)
    model_dir = repo / info.name
    previous: list[VersionRecord] = []
    if (model_dir / MANIFEST_FILENAME).exists():
        previous = read_manifest(model_dir).version_records()
    version = next_version(model_dir)
    last = model_dir / str(version - 1)
    if (
        version > 1
        and version - 1 not in {r.version for r in previous}
        and not (last / MANIFEST_FILENAME).exists()
    ):
        # A publish that died between copying its file and writing any card: the folder is no
        # version (nothing vouches for it); this one takes its number instead of leaving it.
        version -= 1
    # Measure first, then copy: a failed measurement leaves no half-written version behind.
    measured = measured_fields(onnx_src, info.input, data, settings, info.teacher)
    dst = model_file(model_dir, version)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".onnx.tmp")
    shutil.copyfile(onnx_src, tmp)
    if sha256_file(tmp) != measured["sha256"]:
        tmp.unlink()
        raise ModelRepositoryError(f"{onnx_src}: changed while it was being published")
    tmp.replace(dst)
    card = ModelCard(
        name=info.name,
        version=version,
        precision=info.precision,  # type: ignore[arg-type]
        derived_from=info.derived_from,
        labels=info.labels,
        input=info.input,
        output=OutputSpec(name=info.output_name),
        # A variant is converted, not trained: its learning curve is its parent's.
        training=info.training
        if info.derived_from is None
        else info.training.model_copy(update={"history": ()}),
        other_versions=tuple(sorted(previous, key=lambda r: -r.version)),
        created_at=utc_now(),
        **measured,
    )
    # The version's own card first (a service polling the folder loads a version only once its
    # card and file agree), then the model's card, which describes the newest version.
    write_manifest(model_dir / str(version), card)
    write_manifest(model_dir, card)
    return card


def remeasure(
    model_dir: Path,
    data: EvalData,
    settings: ProfileSettings,
    repo_teacher: str | None = None,
    *,
    profile: bool = True,
) -> ModelCard:
    """Re-measure the version a card describes and rewrite the card with the new figures
    (without ``profile``, all but its latency profile, which the card keeps).

    The agreement is measured against the card's teacher when that is a model of the same
    repository; else, when the card had an agreement (a zoo measures every student's against the
    zoo's teacher, Rocket's and the baselines' too), against ``repo_teacher``, the repository's
    teacher (export/report.py ``find_teacher``)."""
    card = read_manifest(model_dir)
    path = model_file(model_dir, card.version)
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: model file of version {card.version} is missing")

    def in_repo(name: str | None) -> bool:
        return bool(name) and (model_dir.parent / str(name) / MANIFEST_FILENAME).is_file()

    reference = card.training.teacher
    if not in_repo(reference):
        had_one = card.metrics.teacher_agreement is not None and repo_teacher != card.name
        reference = repo_teacher if had_one else None
    teacher = None
    if in_repo(reference):
        teacher_dir = model_dir.parent / str(reference)
        teacher_card = read_manifest(teacher_dir)
        teacher = (model_file(teacher_dir, teacher_card.version), teacher_card.input)
    measured = measured_fields(path, card.input, data, settings, teacher, profile=profile)
    return _rewrite_card(model_dir, card, measured)


def _rewrite_card(model_dir: Path, card: ModelCard, update: dict[str, Any]) -> ModelCard:
    """``card`` with ``update`` applied, validated, written as the model's card and as its
    version's own card where it has one (publish writes both: a service serves a version by its
    own card, so new figures must reach it)."""
    updated = ModelCard.model_validate(card.model_copy(update=update).model_dump())
    if (model_dir / str(card.version) / MANIFEST_FILENAME).is_file():
        write_manifest(model_dir / str(card.version), updated)
    write_manifest(model_dir, updated)
    return updated


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_session(path: Path, card: ModelCard) -> str | None:
    """None when ORT loads the file and its input/output match the card, else the problem."""
    try:
        session = make_session(path, "CPUExecutionProvider", 1)
    except Exception as exc:  # ORT raises several unrelated types for a corrupt file
        return f"{path}: ONNX Runtime cannot load it: {_first_line(exc)}"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != card.input.name:
        return f"{path}: graph input {[i.name for i in inputs]} != manifest {card.input.name!r}"
    if list(inputs[0].shape[1:]) != list(card.input.shape):
        return f"{path}: input shape {inputs[0].shape[1:]} != manifest {list(card.input.shape)}"
    if outputs[0].name != card.output.name:
        return f"{path}: graph output {outputs[0].name!r} != manifest {card.output.name!r}"
    if outputs[0].shape[-1] != len(card.labels):
        return f"{path}: {outputs[0].shape[-1]} outputs but {len(card.labels)} labels"
    return None


def verify_model(model_dir: Path, *, load: bool = True) -> list[str]:
    """Problems of one model folder: manifest schema, version folders, hashes, ORT loading."""
    try:
        card = read_manifest(model_dir)
    except ModelRepositoryError as exc:
        return [str(exc)]
    problems: list[str] = []
    on_disk = version_dirs(model_dir)
    records = card.version_records()
    recorded = {r.version for r in records}
    for extra in sorted(set(on_disk) - recorded):
        problems.append(f"{on_disk[extra]}: version {extra} has no record in manifest.json")
    if on_disk and max(on_disk) != card.version and max(on_disk) in recorded:
        problems.append(
            f"{model_dir}: manifest describes version {card.version} "
            f"but version {max(on_disk)} is the highest and would be served"
        )
    for record in records:
        path = model_file(model_dir, record.version)
        if record.version not in on_disk:
            problems.append(f"{model_dir / str(record.version)}: version folder is missing")
            continue
        if not path.is_file():
            problems.append(f"{path}: model file is missing")
            continue
        size = path.stat().st_size
        if size != record.size_bytes:
            problems.append(f"{path}: size {size} bytes != manifest {record.size_bytes}")
        digest = sha256_file(path)
        if digest != record.sha256:
            problems.append(f"{path}: sha256 {digest[:12]}… != manifest {record.sha256[:12]}…")
        if load:
            problem = _check_session(path, card)
            if problem:
                problems.append(problem)
    return problems


def verify_repository(repo: Path, *, load: bool = True) -> tuple[int, int, list[str]]:
    """(models, versions, problems) of a whole repository; problems are one line each."""
    if not repo.is_dir():
        return 0, 0, [f"{repo}: model repository folder does not exist"]
    problems: list[str] = []
    n_models = n_versions = 0
    for child in sorted(repo.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not (child / MANIFEST_FILENAME).exists():
            if version_dirs(child):
                problems.append(f"{child}: manifest.json is missing")
            continue
        n_models += 1
        n_versions += len(version_dirs(child))
        problems.extend(verify_model(child, load=load))
    if n_models == 0 and not problems:
        problems.append(f"{repo}: no models (no <name>/manifest.json found)")
    return n_models, n_versions, problems


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model folder (every version and its card, unchanged, so the hashes still verify) to
    ``dst``, replacing what is there, through a temporary sibling: a reader of ``dst``'s repository
    never sees half a model."""
    tmp = dst.parent / f".{dst.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tmp"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def load_cards(repo: Path) -> list[ModelCard]:
    """Every valid card of a repository (raises on the first invalid one)."""
    return [read_manifest(d) for d in model_dirs(repo)]
