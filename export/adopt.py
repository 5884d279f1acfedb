"""Adopt a zoo's finished networks from a model repository, so a lost work folder retrains none.

A zoo's training state lives outside the work tree and may be lost with its machine; the models a
zoo published and a repository kept (``pick`` copies them into ``models/``, which is committed)
carry everything needed to go on: the ONNX file rebuilds the trained network
(:func:`export.onnx_export.load_onnx_weights`) and the card tells how it was trained. A network is
adopted only when its card's recipe is the one the zoo would train now, and only once the rebuilt
network reproduces the file's logits (parity on the test split).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from export.checkpoint import TrainedMeta, save_trained
from export.models import build_model
from export.onnx_export import ExportError, check_parity, load_onnx_weights
from export.repository import EvalData, ProfileSettings, copy_model, remeasure
from export.training.config import FINGERPRINT_IGNORES, fingerprint_changes
from export.training.logs import RunLog
from export.training.result import ADOPTED_EVENT, TrainResult, jsonable, write_result
from export.training.run import ARTIFACT_FILENAME
from service.contract.model_card import ModelCard, model_file, read_manifest

# Where the data lives and which teacher file a run read say nothing of what it trained on (the
# teacher is matched by its served name, which the card records).
_NOT_RECIPE = (*FINGERPRINT_IGNORES, "data_dir", "teacher")


def recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a training config that decides what is trained."""
    return {k: v for k, v in config.items() if k not in _NOT_RECIPE}


def recipe_changes(card: ModelCard, config: dict[str, Any], teacher: str | None) -> list[str]:
    """What differs between how ``card``'s network was trained and the resolved ``config`` a zoo
    would train it with now (distilled from the served model named ``teacher``), as
    ``key: card value != wanted value`` lines; empty when the card's network is the one wanted."""
    old, new = recipe(dict(card.training.config)), recipe(jsonable(config))
    changes = [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in fingerprint_changes(new, old)]
    if card.training.teacher != teacher and teacher is not None:
        changes.append(f"teacher: {card.training.teacher!r} != {teacher!r}")
    if card.derived_from is not None or card.precision != "fp32":
        changes.append(f"precision: {card.precision} variant, not the trained network")
    return changes


def source_card(source: Path, name: str) -> ModelCard | None:
    """The card of model ``name`` in repository ``source``; None when it has none."""
    folder = source / name
    if not (folder / "manifest.json").is_file():
        return None
    return read_manifest(folder)


def rebuild(
    card: ModelCard, onnx_path: Path, test_images: np.ndarray
) -> tuple[nn.Module, dict[str, int]]:
    """The trained network of ``card`` rebuilt from its ONNX file, parity proved on the images,
    and the keyword arguments that build its architecture."""
    channels, height, _ = card.input.shape
    kwargs = {"in_channels": channels, "num_classes": len(card.labels), "image_size": height}
    model = load_onnx_weights(build_model(card.training.architecture, **kwargs), onnx_path)
    parity = check_parity(model, onnx_path, test_images, card.input)
    if not parity.ok:
        raise ExportError(f"{onnx_path}: the rebuilt network differs: {parity.summary()}")
    return model, kwargs


def fill_hits(
    model_dir: Path, data: EvalData, settings: ProfileSettings, repo_teacher: str | None
) -> None:
    """Measure again the accuracy figures of a card that lacks per-image hits
    (``metrics.correct``: a repository published before cards kept them), keeping its latency
    profile: the zoo reads its comparisons with the paired test, which needs both sides' hits.
    ``repo_teacher``: the zoo's teacher, as :func:`export.repository.remeasure` takes it."""
    if read_manifest(model_dir).metrics.correct is None:
        remeasure(model_dir, data, settings, repo_teacher, profile=False)


def adopt(
    card: ModelCard,
    source: Path,
    out_dir: Path,
    fingerprint: dict[str, Any],
    data: EvalData,
    settings: ProfileSettings,
    zoo_repo: Path,
    variants: list[str],
    repo_teacher: str | None,
) -> ModelCard:
    """Rebuild ``card``'s network into the run folder ``out_dir`` as a finished run with
    ``fingerprint`` (so a resumed zoo loads it like one it trained), beside its ONNX file, and
    copy the model and the ``variants`` the source has into ``zoo_repo`` where it lacks them
    (measuring on ``data`` the per-image hits of a card served without them, with ``settings``
    and the zoo's teacher ``repo_teacher``); returns the adopted card."""
    onnx_path = model_file(source / card.name, card.version)
    model, kwargs = rebuild(card, onnx_path, data.images)
    training = card.training
    history = [record.model_dump(mode="json") for record in training.history]
    # PyTorch's top-1 at the end of training, as a trained artifact records it; the card's
    # (ONNX Runtime on the served file) where the card kept no learning curve.
    last = history[-1].get("test_top1") if history else None
    top1 = float(last) if last is not None else card.metrics.top1
    meta = TrainedMeta(
        arch=training.architecture,
        model_kwargs=kwargs,
        dataset=training.dataset,
        labels=list(card.labels),
        input_spec=card.input.model_dump(mode="json"),
        method=training.method,
        teacher=training.teacher,
        epochs=training.epochs,
        seed=training.seed,
        config=dict(training.config),
        wall_time_s=training.wall_time_s,
        device=training.device or "",
        recipe=training.recipe,
        test_top1=top1,
        history=history,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = save_trained(out_dir / ARTIFACT_FILENAME, model, meta)
    shutil.copyfile(onnx_path, out_dir / "model.onnx")
    result = TrainResult(
        artifact,
        {},
        meta.test_top1,
        training.wall_time_s,
        out_dir,
        True,
        int(training.epochs),
        0,
        history,
    )
    write_result(out_dir, fingerprint, result)
    for name in [card.name, *(f"{card.name}-{v}" for v in variants)]:
        if (source / name / "manifest.json").is_file() and not (zoo_repo / name).exists():
            copy_model(source / name, zoo_repo / name)
            fill_hits(zoo_repo / name, data, settings, repo_teacher)
    RunLog(out_dir).write(
        ADOPTED_EVENT,
        source=str(source / card.name),
        version=card.version,
        epochs=training.epochs,
        test_top1=meta.test_top1,
        wall_time_s=training.wall_time_s,
        config=dict(training.config),
    )
    return card
