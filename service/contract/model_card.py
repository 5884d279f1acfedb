"""The model card (manifest.json) schema and model-repository layout, shared by export and service.

Layout of a model repository::

    <repo>/<model-name>/manifest.json          the model card (this schema)
    <repo>/<model-name>/<version>/model.onnx   versions are positive integers; the highest is served

This module is the single contract between the offline half (``export/``, which writes
repositories) and the online half (``service/``, which serves them). It depends only on
pydantic and the standard library so that the slim serving image can import it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_FILENAME = "manifest.json"
MODEL_FILENAME = "model.onnx"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME_RE = re.compile(MODEL_NAME_PATTERN)


class ModelRepositoryError(Exception):
    """A model repository or one of its manifests is missing, malformed or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResizeSpec(_Strict):
    """How an image of any size is brought to the model's input size."""

    height: int = Field(gt=0, description="Target height in pixels.")
    width: int = Field(gt=0, description="Target width in pixels.")
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = Field(
        "bilinear", description="Pillow resampling filter; skipped when the image already fits."
    )


class InputSpec(_Strict):
    """The model's input tensor and the exact preprocessing that produces it from an 8-bit image."""

    name: str = Field(description="ONNX input name.")
    layout: Literal["NCHW"] = "NCHW"
    shape: tuple[int, int, int] = Field(
        description="[C, H, W] of one image; batch axis is dynamic."
    )
    dtype: Literal["float32", "float16"] = "float32"
    color: Literal["rgb", "gray"] = Field(description="Colour conversion applied with Pillow.")
    resize: ResizeSpec
    scale: float = Field(1.0 / 255.0, gt=0, description="Multiplier applied to 8-bit pixels.")
    mean: tuple[float, ...] = Field(description="Per-channel mean subtracted after scaling.")
    std: tuple[float, ...] = Field(description="Per-channel std divided after subtracting mean.")

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        channels = self.shape[0]
        want = 3 if self.color == "rgb" else 1
        if channels != want:
            raise ValueError(f"color {self.color!r} needs {want} channel(s), shape has {channels}")
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} value(s) each")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if (self.resize.height, self.resize.width) != (self.shape[1], self.shape[2]):
            raise ValueError("resize must produce the input shape's H and W")
        return self


class OutputSpec(_Strict):
    """The model's output tensor."""

    name: str = Field(description="ONNX output name.")
    kind: Literal["logits"] = "logits"


class EpochRecord(_Strict):
    """One training epoch as the trainer logged it (PyTorch, on the training device): a point of
    the network's learning curve."""

    epoch: int = Field(
        ge=1, description="1-based epoch of the whole run (FitNets counts its hint stage first)."
    )
    stage: Literal["hint"] | None = Field(
        None, description="'hint' for FitNets' stage 1 (hint training of the lower layers)."
    )
    loss: float = Field(description="Mean training loss of the epoch (the method's total loss).")
    train_acc: float = Field(ge=0, le=1, description="Top-1 on the epoch's augmented batches.")
    test_top1: float = Field(
        ge=0,
        le=1,
        description="Top-1 on the test split after the epoch. A learning curve only: no epoch "
        "is selected by it, the network of the last epoch is the one exported.",
    )
    lr: float = Field(ge=0, description="Learning rate at the end of the epoch.")
    img_per_s: float = Field(ge=0, description="Training throughput of the epoch.")
    epoch_time_s: float = Field(ge=0, description="Training time of the epoch (pauses excluded).")
    finished_at: float | None = Field(
        None, description="When the epoch ended, Unix time (from the run's log); None if unknown."
    )


class TrainingInfo(_Strict):
    """How the network was produced offline."""

    method: str = Field(
        description="Registry name of the training method (baseline, kd, rocket...)."
    )
    architecture: str = Field(description="Architecture name, e.g. wrn-16-1 or mobilenetv2-0.5.")
    teacher: str | None = Field(None, description="Teacher architecture or model name, if any.")
    dataset: str
    epochs: float = Field(ge=0)
    seed: int
    config: dict[str, Any] = Field(default_factory=dict, description="The full training config.")
    wall_time_s: float = Field(ge=0, description="Training wall time in seconds.")
    device: str | None = Field(None, description="Where it was trained, e.g. 'cpu (2 cores)'.")
    recipe: str | None = Field(None, description="One-line description of the training recipe.")
    companions: dict[str, float] = Field(
        default_factory=dict,
        description="Top-1 on the test split (PyTorch, at the end of training) of networks "
        "trained jointly with this one and not served, e.g. Rocket's booster.",
    )
    history: tuple[EpochRecord, ...] = Field(
        (),
        description="Every epoch of the training run, in order (empty for a variant converted "
        "from a trained network, and for cards written before histories were kept).",
    )


class EvalMetrics(_Strict):
    """Accuracy measured with ONNX Runtime on the served artifact."""

    dataset: str
    split: str
    n: int = Field(gt=0, description="Number of evaluated images.")
    top1: float = Field(ge=0, le=1, description="Top-1 accuracy as a fraction.")
    top5: float | None = Field(
        None, ge=0, le=1, description="Top-5 accuracy (more than 5 classes)."
    )
    measured_with: str = Field(description="e.g. 'onnxruntime 1.20.1'.")
    teacher_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of the split on which the model's top-1 equals its teacher's "
        "(training.teacher; in a zoo, the zoo's teacher for every student, distilled from it or "
        "not): the baseline the service's live agreement is compared with.",
    )
    ece: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Expected calibration error of the softmax scores (15 equal-width "
        "confidence bins): how far the score of the top class is from its accuracy.",
    )
    nll: float | None = Field(
        None, ge=0, description="Mean negative log-likelihood of the true class (nats)."
    )
    correct: str | None = Field(
        None,
        description="Which images of the split the model gets right, in split order: one bit "
        "per image (1: top-1 right), packed most significant bit first (numpy.packbits), "
        "base64. Two models' top-1 gap is tested on the images where they differ "
        "(export/noise.py); the service does not read it.",
    )

    @model_validator(mode="after")
    def _correct_fits(self) -> EvalMetrics:
        if self.correct is not None:
            try:
                packed = base64.b64decode(self.correct, validate=True)
            except ValueError as exc:
                raise ValueError(f"correct is not base64: {exc}") from None
            if len(packed) != (self.n + 7) // 8:
                raise ValueError(
                    f"correct holds {len(packed)} bytes, {(self.n + 7) // 8} for {self.n} images"
                )
            padding = 8 * len(packed) - self.n
            if packed and packed[-1] & ((1 << padding) - 1):
                raise ValueError(f"correct sets bits past its {self.n} images")
            hits = int.from_bytes(packed, "big").bit_count()
            if hits != round(self.top1 * self.n):
                raise ValueError(
                    f"correct marks {hits} of {self.n} images right, top1 {self.top1} says "
                    f"{round(self.top1 * self.n)}"
                )
        return self


class ProfileRow(_Strict):
    """Latency of one batch size."""

    batch_size: int = Field(gt=0)
    p50_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    images_per_s: float = Field(ge=0)


class LatencyProfile(_Strict):
    """Offline latency profile of the artifact in ONNX Runtime."""

    provider: str
    threads: int = Field(ge=0, description="intra_op_num_threads (0 = ORT default).")
    machine: str = Field(description="The machine the figures come from.")
    rounds: int = Field(
        default=1,
        ge=1,
        description="Interleaved rounds (every model of the repository profiled once per round) "
        "whose median each figure is; 1: a single run.",
    )
    rows: tuple[ProfileRow, ...]

    def row(self, batch_size: int) -> ProfileRow | None:
        """The figures of ``batch_size``, if it was measured."""
        return next((r for r in self.rows if r.batch_size == batch_size), None)


class VersionRecord(_Strict):
    """Integrity record of one served version."""

    version: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(gt=0)


class ModelCard(_Strict):
    """manifest.json: everything the service and a user need to know about one model."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    version: int = Field(gt=0, description="The version the figures below were measured on.")
    task: Literal["image-classification"] = "image-classification"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    derived_from: str | None = Field(None, description="Source model of a quantized variant.")
    labels: tuple[str, ...] = Field(min_length=2, description="Class labels in index order.")
    input: InputSpec
    output: OutputSpec
    training: TrainingInfo
    metrics: EvalMetrics
    profile: LatencyProfile
    params: int = Field(ge=0)
    macs: int = Field(ge=0, description="Multiply-accumulates for one image.")
    size_bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    other_versions: tuple[VersionRecord, ...] = Field(
        (), description="Integrity records of further versions kept in the repository."
    )
    created_at: datetime

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    def version_records(self) -> list[VersionRecord]:
        """Integrity records of every version this card vouches for, the main one first."""
        main = VersionRecord(version=self.version, sha256=self.sha256, size_bytes=self.size_bytes)
        return [main, *self.other_versions]


def utc_now() -> datetime:
    """The current time, timezone-aware, for ``created_at``."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a legal model name, else raise ModelRepositoryError."""
    if not _NAME_RE.match(name):
        raise ModelRepositoryError(
            f"invalid model name {name!r}: use lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def read_version_card(model_dir: Path, version: int) -> ModelCard | None:
    """The card of one version, ``<model_dir>/<version>/manifest.json``, if it has its own."""
    path = model_dir / str(version) / MANIFEST_FILENAME
    if not path.is_file():
        return None
    card = _load_card(path)
    if card.name != model_dir.name or card.version != version:
        raise ModelRepositoryError(
            f"{path}: card of {card.name!r} version {card.version} in the folder of "
            f"{model_dir.name!r} version {version}"
        )
    return card


def read_manifest(model_dir: Path) -> ModelCard:
    """Load and validate ``<model_dir>/manifest.json``."""
    path = model_dir / MANIFEST_FILENAME
    card = _load_card(path)
    if card.name != model_dir.name:
        raise ModelRepositoryError(
            f"{path}: manifest name {card.name!r} does not match folder {model_dir.name!r}"
        )
    return card


def _load_card(path: Path) -> ModelCard:
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: manifest.json is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRepositoryError(f"{path}: not valid JSON ({exc})") from None
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ModelRepositoryError(
            f"{path}: invalid manifest: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None
    return card


def write_manifest(model_dir: Path, card: ModelCard) -> Path:
    """Write ``card`` as ``<model_dir>/manifest.json`` (atomically) and return the path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MANIFEST_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Version folders (positive integer names) of one model, by version number."""
    found: dict[int, Path] = {}
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isascii() and child.name.isdecimal() and int(child.name):
            found[int(child.name)] = child
    return dict(sorted(found.items()))


def model_file(model_dir: Path, version: int) -> Path:
    """Path of the ONNX file of one version."""
    return model_dir / str(version) / MODEL_FILENAME


def model_dirs(repo: Path) -> list[Path]:
    """Model folders of a repository (those holding a manifest.json), sorted by name."""
    if not repo.is_dir():
        raise ModelRepositoryError(f"{repo}: model repository folder does not exist")
    return sorted(p for p in repo.iterdir() if p.is_dir() and (p / MANIFEST_FILENAME).exists())
