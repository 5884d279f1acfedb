"""Trained artifacts: one standalone network plus the JSON-friendly story of how it was made."""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.models import build_model

ARTIFACT_FORMAT = "rocketserve-trained/1"


class ArtifactError(Exception):
    """A trained-artifact file is missing, foreign or inconsistent."""


@dataclass
class TrainedMeta:
    """How a trained network was produced; ``model_kwargs`` rebuilds it with build_model."""

    arch: str
    model_kwargs: dict[str, Any]
    dataset: str
    labels: list[str]
    input_spec: dict[str, Any]
    method: str
    teacher: str | None = None
    epochs: float = 0.0
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    device: str = "cpu"
    recipe: str | None = None
    test_top1: float = 0.0
    # Every epoch's record (export/training/loop.py); artifacts saved before it was kept have none.
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedMeta:
        """Inverse of to_dict; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ArtifactError(f"unknown TrainedMeta field(s): {', '.join(unknown)}")
        return cls(**data)


def save_trained(path: str | Path, model: nn.Module, meta: TrainedMeta) -> Path:
    """Write the network's weights and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"format": ARTIFACT_FORMAT, "meta": meta.to_dict(), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with weights only; a corrupt or foreign file is one ArtifactError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about a foreign pickle before refusing it
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types, with pages of advice, for a corrupt file
        raise ArtifactError(
            f"{path}: not a readable torch file (corrupt, truncated, or not written by rocketserve)"
        ) from None


def load_trained(path: str | Path) -> tuple[nn.Module, TrainedMeta]:
    """Rebuild the network with build_model, load its weights (strictly) and put it in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: trained artifact not found")
    blob = read_torch_file(path)
    if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: not a rocketserve trained artifact ({ARTIFACT_FORMAT})")
    meta = TrainedMeta.from_dict(blob["meta"])
    model = build_model(meta.arch, **meta.model_kwargs)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit {meta.arch}: {exc}") from None
    return model.eval(), meta
