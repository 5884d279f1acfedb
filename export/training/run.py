"""run_training(config): the Python API the zoo calls, from a config dict to trained artifacts."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.checkpoint import ArtifactError, TrainedMeta, load_trained, save_trained
from export.data import DatasetSplits, load_dataset
from export.devices import devices_text
from export.distill import DistillMethod, MethodContext, get_method
from export.models import build_model, is_architecture
from export.models.base import StagedNet
from export.models.rocket import extract_standalone
from export.training.config import (
    ROCKET_METHODS,
    TEACHER_METHODS,
    ConfigError,
    default_out_dir,
    fingerprint,
    resolve_config,
)
from export.training.logs import RunLog, read_log
from export.training.loop import CHECKPOINT_FILENAME, BatchSource, Trainer, evaluate
from export.training.result import (
    HINT_STAGE_DIR,
    RESULT_FILENAME,
    TrainResult,
    jsonable,
    read_finished,
    whole_history,
    write_result,
)
from export.training.runtime import (
    DistInfo,
    describe_device,
    finish_distributed,
    init_distributed,
    rank_checksums,
    resolve_precision,
    seed_everything,
    select_device,
)
from export.training.soft_labels import SoftLabelStore, images_digest

ARTIFACT_FILENAME = "trained.pt"


def _recipe(cfg: dict[str, Any], augment: bool) -> str:
    if cfg["recipe"]:
        return str(cfg["recipe"])
    momentum = f" momentum {cfg['momentum']}" if cfg["optimizer"] == "sgd" else ""
    nesterov = " nesterov" if cfg["optimizer"] == "sgd" and cfg["nesterov"] else ""
    return (
        f"{cfg['optimizer']}{momentum}{nesterov}, {cfg['schedule']} lr {cfg['lr']}, "
        f"batch {cfg['batch_size']}, weight decay {cfg['weight_decay']}, label smoothing "
        f"{cfg['label_smoothing']}, augmentation {'crop+flip' if augment else 'none'}, "
        f"{cfg['epochs']} epochs{_stage_split(cfg)}, {cfg['precision']} training"
    )


def _stage_split(cfg: dict[str, Any]) -> str:
    if cfg["method"] != "fitnet":
        return ""
    hint = cfg["hint_epochs"]
    return f" ({hint} of stage 1, hints; {cfg['epochs'] - hint:g} of stage 2, KD)"


# A Rocket run without joint training trains its booster alone first, in this sub-run folder.
BOOSTER_PRETRAIN_DIR = "booster-pretrain"


def _train_subset(data: DatasetSplits, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the training images used: all, or a seeded random subset of ``limit``."""
    n = len(data.train_images)
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _sub_run(cfg: dict[str, Any], out_dir: Path, arch: str, name: str) -> TrainResult:
    """Train ``arch`` with the baseline method inside this run (a teacher or a booster)."""
    sub = {k: v for k, v in cfg.items() if k not in ("teacher", "booster", "teacher_epochs")}
    sub.update(
        method="baseline",
        student=arch,
        epochs=cfg["teacher_epochs"] or cfg["epochs"],
        out_dir=str(out_dir / name),
        resume=True,  # a finished sub-run is reused, an interrupted one continues
        stop_after=None,
    )
    return run_training(sub)


def _check_first_stage(cfg: dict[str, Any], out_dir: Path, stage: str, what: str) -> None:
    """A resumed run past its first stage (a FitNets hint stage, a Rocket booster trained alone)
    needs that stage's finished sub-run: one missing (a run folder copied back from another
    machine without its subfolders) would train again, wasted, and its record would not be the
    weights the checkpoint's stage went on from. A run that does not resume starts afresh."""
    if not cfg["resume"]:
        return
    finished = (out_dir / stage / RESULT_FILENAME).is_file()
    if (out_dir / CHECKPOINT_FILENAME).is_file() and not finished:
        raise ConfigError(
            f"{out_dir} has a checkpoint past its {what} but {out_dir / stage} holds no finished "
            "run: copy the run's folder whole, subfolders included, or delete its "
            f"{CHECKPOINT_FILENAME} to train it again from the start"
        )


def _hint_stage(cfg: dict[str, Any], out_dir: Path, teacher: Path) -> TrainResult:
    """FitNets stage 1 (fitnet-hints, hint_epochs of the run's epochs) as a sub-run: part of
    this run, so it resumes (or, finished, is reused) when the run resumes, and shares its
    stop_after."""
    sub = {k: v for k, v in cfg.items() if k not in ("booster", "teacher_epochs")}
    sub.update(
        method="fitnet-hints",
        teacher=str(teacher),
        epochs=cfg["hint_epochs"],
        hint_epochs=None,
        out_dir=str(out_dir / HINT_STAGE_DIR),
    )
    return run_training(sub)


def _load_net(path: Path, data: DatasetSplits, role: str) -> tuple[StagedNet, str]:
    try:
        net, meta = load_trained(path)
    except ArtifactError as exc:
        raise ConfigError(f"{role}: {exc}") from None
    if meta.dataset != data.name or tuple(meta.labels) != data.labels:
        raise ConfigError(f"{role} {path} was trained on {meta.dataset}, not on {data.name}")
    if not isinstance(net, StagedNet):
        raise ConfigError(f"{role} {path}: unsupported network type")
    return net, meta.arch


def _resolve_teacher(
    cfg: dict[str, Any], data: DatasetSplits, out_dir: Path, extra: dict[str, Path]
) -> tuple[StagedNet | None, str | None]:
    spec = cfg["teacher"]
    if not spec or cfg["method"] not in TEACHER_METHODS:
        return None, None
    path = Path(spec)
    if path.is_file():
        extra["teacher"] = path
    elif is_architecture(spec):
        extra["teacher"] = _sub_run(cfg, out_dir, spec, "teacher").artifact_path
    else:
        raise ConfigError(f"teacher {spec!r} is neither an architecture nor a trained .pt file")
    return _load_net(extra["teacher"], data, "teacher")


def _booster_arch(cfg: dict[str, Any]) -> str:
    """The booster's architecture: ``booster``, else the teacher's (a name, or a .pt's arch).

    Rocket trains its booster from scratch with the light net, so a trained teacher artifact
    only lends its architecture here.
    """
    if cfg["booster"]:
        return str(cfg["booster"])
    spec = str(cfg["teacher"])
    if Path(spec).is_file():
        try:
            return load_trained(spec)[1].arch
        except ArtifactError as exc:
            raise ConfigError(f"booster: {exc}") from None
    return spec


def _soft_label_store(
    cfg: dict[str, Any],
    method: DistillMethod,
    teacher_path: Path | None,
    source: BatchSource,
    device: torch.device,
    dist_info: DistInfo,
) -> SoftLabelStore | None:
    """The shared store of the teacher's logits, for methods that need nothing else from it."""
    if not (cfg["soft_label_cache"] and method.teacher_logits_only and teacher_path is not None):
        return None
    stream = {
        "dataset": cfg["dataset"],
        "image_size": cfg["image_size"],
        "color": cfg["color"],
        "train_images": images_digest(source.images),
        "seed": cfg["seed"],
        "batch_size": source.local_batch,
        "world_size": dist_info.world_size,
        "rank": dist_info.rank,
        "augment": source.augment,
        "channels_last": source.channels_last,
        "precision": cfg["precision"],
        "device": device.type,
    }
    precision = cfg["precision"]
    return SoftLabelStore(
        method.teacher,
        teacher_path,
        stream,
        source.epoch,
        lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
        device,
    )


def run_training(config: dict[str, Any]) -> TrainResult:
    """Train as ``config`` says (see export/training/config.py for every key) and save artifacts."""
    cfg = resolve_config(config)
    out_dir = Path(cfg["out_dir"]) if cfg["out_dir"] else default_out_dir(cfg)
    device = select_device(cfg["device"])
    cfg["precision"] = resolve_precision(cfg["precision"], device)
    # A teacher or booster trained inside this run reuses the process group; only the call that
    # joined it leaves it.
    owns_group = not torch.distributed.is_initialized()
    dist_info = init_distributed(device)
    threads = torch.get_num_threads()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        return _run(cfg, out_dir, device, dist_info)
    finally:
        torch.set_num_threads(threads)
        if dist_info.enabled and owns_group:
            finish_distributed()


def _device_records(out_dir: Path, before: TrainResult, two_stage: bool) -> list[dict[str, Any]]:
    """The run's log records that say where it trained; a two-stage run's stage-1 records first,
    stage 2's start and resume epochs counted after stage 1's, as its learning curve counts them."""
    records = read_log(out_dir)
    if not two_stage:
        return records
    shifted = [
        {**r, "epoch": int(r.get("epoch") or 0) + before.epochs_done}
        if r.get("event") in ("start", "resume")
        else r
        for r in records
    ]
    return read_log(out_dir / HINT_STAGE_DIR) + shifted


def _run(cfg: dict[str, Any], out_dir: Path, device: torch.device, dist_info: Any) -> TrainResult:
    fp = fingerprint(cfg)
    result_file = out_dir / RESULT_FILENAME
    finished = read_finished(out_dir, fp) if cfg["resume"] else None
    if finished is not None:
        return finished
    if not cfg["resume"] and dist_info.is_main:
        # A fresh run replaces whatever an earlier run left in out_dir (the log keeps its history).
        for stale in (out_dir / CHECKPOINT_FILENAME, result_file):
            stale.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset(
        cfg["dataset"],
        cfg["data_dir"],
        cache_dir=cfg["cache_dir"],
        image_size=cfg["image_size"],
        color=cfg["color"],
    )
    extra: dict[str, Path] = {}
    teacher, teacher_arch = _resolve_teacher(cfg, data, out_dir, extra)
    options = dict(cfg)
    ctx_extras: dict[str, Any] = {}
    pretrain_s = 0.0  # Rocket without joint training: the booster's own training is the method's
    if cfg["method"] in ROCKET_METHODS:
        options["booster"] = _booster_arch(cfg)
        if not cfg["joint"]:
            _check_first_stage(cfg, out_dir, BOOSTER_PRETRAIN_DIR, "booster's own training")
            booster = _sub_run(cfg, out_dir, options["booster"], BOOSTER_PRETRAIN_DIR)
            ctx_extras["pretrained_booster"], _ = _load_net(booster.artifact_path, data, "booster")
            pretrain_s = booster.wall_time_s
    # fitnet: stage 1 first; this run's Trainer is then stage 2, with its own schedule.
    stage_cfg, before = cfg, TrainResult(out_dir / ARTIFACT_FILENAME, out_dir=out_dir)
    if cfg["method"] == "fitnet":
        _check_first_stage(cfg, out_dir, HINT_STAGE_DIR, "hint stage")
        before = _hint_stage(cfg, out_dir, extra["teacher"])
        if not before.completed:
            return replace(before, artifact_path=out_dir / ARTIFACT_FILENAME, out_dir=out_dir,
                           extra_artifacts=extra)  # fmt: skip
        ctx_extras["hint_trained_student"], _ = _load_net(before.artifact_path, data, "stage 1")
        stage_cfg = {**cfg, "epochs": cfg["epochs"] - cfg["hint_epochs"]}
        if cfg["stop_after"] is not None:
            stage_cfg["stop_after"] = cfg["stop_after"] - before.epochs_run

    def make_net(arch: str) -> StagedNet:
        return build_model(
            arch,
            in_channels=data.in_channels,
            num_classes=data.num_classes,
            image_size=data.image_size,
        )

    seed_everything(cfg["seed"])
    method = get_method(cfg["method"])(
        MethodContext(options, cfg["student"], make_net, teacher, teacher_arch, ctx_extras)
    )
    channels_last = (
        cfg["channels_last"] if cfg["channels_last"] is not None else device.type == "cpu"
    )
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    augment = cfg["augment"] if cfg["augment"] is not None else data.name != "digits"
    source = BatchSource(
        data,
        _train_subset(data, cfg["max_train_images"], cfg["seed"]),
        device,
        batch_size=cfg["batch_size"],
        augment=augment,
        channels_last=channels_last,
        seed=cfg["seed"],
        dist_info=dist_info,
    )
    log = RunLog(out_dir, enabled=dist_info.is_main)
    soft_labels = _soft_label_store(cfg, method, extra.get("teacher"), source, device, dist_info)
    trainer = Trainer(method, source, stage_cfg, out_dir, dist_info, log, soft_labels)
    resumed = cfg["resume"] and trainer.load_checkpoint(fp)
    device_text = describe_device(device, dist_info.world_size)
    log.write(
        "resume" if resumed else "start",
        epoch=trainer.state.epoch,
        config=cfg,
        device=device_text,
        world_size=dist_info.world_size,
        train_images=len(source.images),
        test_images=len(source.test_images),
        steps_per_epoch=source.steps_per_epoch,
        **({"hint_stage": str(out_dir / HINT_STAGE_DIR)} if stage_cfg is not cfg else {}),
    )
    wall_start = time.perf_counter()
    completed = trainer.run(fp)
    # A two-stage run counts stage 1's epochs and time too; Rocket not joint, its booster's time.
    wall_time_s = round(before.wall_time_s + pretrain_s + trainer.state.elapsed_s, 3)
    epochs_done = before.epochs_done + trainer.state.epoch
    epochs_run = before.epochs_run + trainer.epochs_run
    history = whole_history(before, trainer.state.history, out_dir, stage_cfg is not cfg)
    if not completed:
        log.write("stopped", epoch=trainer.state.epoch)
        return TrainResult(
            out_dir / ARTIFACT_FILENAME,
            extra,
            0.0,
            wall_time_s,
            out_dir,
            False,
            epochs_done,
            epochs_run,
            history,
        )
    checksums = rank_checksums(method) if dist_info.enabled else None
    artifacts: dict[str, Path] = {}
    top1 = 0.0
    for name, (net, arch) in method.outputs().items():
        standalone = extract_standalone(net, make_net(arch)).to(device)
        if channels_last:
            standalone.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        acc = evaluate(standalone, source)
        if name == "student":
            top1 = acc
        meta = TrainedMeta(
            arch=arch,
            model_kwargs={
                "in_channels": data.in_channels,
                "num_classes": data.num_classes,
                "image_size": data.image_size,
            },
            dataset=data.name,
            labels=list(data.labels),
            input_spec=data.input_spec.model_dump(mode="json"),
            method=cfg["method"] if name == "student" else f"{cfg['method']}:{name}",
            teacher=_teacher_name(cfg, name, options, teacher_arch),
            epochs=float(cfg["epochs"]),
            seed=cfg["seed"],
            config=jsonable(cfg),
            wall_time_s=wall_time_s,
            device=devices_text(
                _device_records(out_dir, before, stage_cfg is not cfg), epochs_done, device_text
            ),
            recipe=_recipe(cfg, augment),
            test_top1=acc,
            history=history if name == "student" else [],  # the records follow the student
        )
        path = out_dir / (ARTIFACT_FILENAME if name == "student" else f"{name}.pt")
        if dist_info.is_main:
            save_trained(path, standalone, meta)
        artifacts[name] = path
    extra.update({k: v for k, v in artifacts.items() if k != "student"})
    result = TrainResult(
        artifacts["student"],
        extra,
        top1,
        wall_time_s,
        out_dir,
        True,
        epochs_done,
        epochs_run,
        history,
    )
    log.write(
        "end",
        test_top1=top1,
        wall_time_s=result.wall_time_s,
        run_time_s=round(time.perf_counter() - wall_start, 3),
        artifacts={k: str(v) for k, v in artifacts.items()},
        rank_checksums=checksums,
    )
    if dist_info.is_main:
        write_result(out_dir, fp, result)
    if dist_info.enabled:
        torch.distributed.barrier()  # other ranks may load these artifacts right away
    return result


def _teacher_name(
    cfg: dict[str, Any], name: str, options: dict[str, Any], teacher_arch: str | None
) -> str | None:
    if name == "booster":
        return None
    if cfg["method"] in ROCKET_METHODS:
        return str(options["booster"])
    return teacher_arch
