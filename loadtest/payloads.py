"""Sample images, request bodies and response checks shared by the locustfile and the bench."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True)
class SampleImage:
    """One encoded image file from ``loadtest/data`` with its true label."""

    name: str
    label: str
    media_type: str
    data: bytes

    @property
    def b64(self) -> str:
        """Base64 text of the encoded bytes, for JSON bodies."""
        return base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class ModelInfo:
    """What a load generator needs to know about one served model."""

    name: str
    version: int
    labels: tuple[str, ...]
    color: str
    dataset: str
    top1: float | None = None
    macs: int = 0


def load_images(folder: Path) -> list[SampleImage]:
    """Every PNG/JPEG under ``folder``, sorted by name; file names start with ``<label>_``."""
    images = []
    for path in sorted(folder.iterdir()):
        media_type = _MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None or not path.is_file():
            continue
        label = path.stem.split("_")[0]
        images.append(SampleImage(path.name, label, media_type, path.read_bytes()))
    if not images:
        raise FileNotFoundError(f"{folder}: no PNG or JPEG sample images")
    return images


def images_for(model: ModelInfo, data_dir: Path = DATA_DIR) -> list[SampleImage]:
    """Sample images fitting a model: CIFAR-10 JPEGs for colour models, digits PNGs otherwise."""
    if model.dataset.startswith("cifar") or (model.dataset != "digits" and model.color == "rgb"):
        return load_images(data_dir / "cifar10")
    return load_images(data_dir / "digits")


def parse_model(entry: Mapping[str, Any]) -> ModelInfo:
    """A ModelInfo from one model description of GET /models or GET /models/{name}.

    Reads ``name``, ``labels``, ``input.color``, ``training.dataset`` and ``macs``; the version is
    ``default_version`` (or ``version``) and top-1 comes from that version's offline metrics (or
    a top-level ``metrics``).
    """
    name = entry.get("name")
    version = entry.get("default_version", entry.get("version"))
    labels = entry.get("labels")
    if not isinstance(name, str) or not isinstance(version, int) or not labels:
        raise ValueError(f"model description lacks name, version or labels: {sorted(entry)}")
    metrics = entry.get("metrics") or {}
    for described in entry.get("versions") or []:
        if described.get("version") == version:
            metrics = (described.get("offline") or {}).get("metrics") or metrics
    spec = entry.get("input") or {}
    training = entry.get("training") or {}
    top1 = metrics.get("top1")
    return ModelInfo(
        name=name,
        version=version,
        labels=tuple(str(label) for label in labels),
        color=str(spec.get("color", "rgb")),
        dataset=str(training.get("dataset") or metrics.get("dataset") or ""),
        top1=float(top1) if isinstance(top1, (int, float)) else None,
        macs=int(entry.get("macs") or 0),
    )


def parse_models(body: Any) -> list[ModelInfo]:
    """Models of a GET /models body: a list of descriptions or ``{"models": [...]}``."""
    entries = body.get("models", body) if isinstance(body, Mapping) else body
    if not isinstance(entries, list) or not entries:
        raise ValueError("GET /models returned no models")
    return [parse_model(entry) for entry in entries]


def multipart_files(images: Sequence[SampleImage]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The ``files=`` argument of requests/httpx: one ``file`` field per image."""
    return [("file", (img.name, img.data, img.media_type)) for img in images]


def encode_multipart(
    images: Sequence[SampleImage], fields: Mapping[str, str] | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body (text ``fields`` then one ``file`` part per image) and its
    content type, encoded once so that a load generator does not pay for it on every request."""
    boundary = f"rocketserve-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for key, value in (fields or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for img in images:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{img.name}"\r\nContent-Type: {img.media_type}\r\n\r\n'
        )
        parts.append(head.encode() + img.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def json_body(images: Sequence[SampleImage], model: str | None = None) -> dict[str, Any]:
    """A JSON /predict body: ``image`` for one input, ``images`` for several."""
    body: dict[str, Any] = (
        {"image": images[0].b64} if len(images) == 1 else {"images": [i.b64 for i in images]}
    )
    if model is not None:
        body["model"] = model
    return body


def check_prediction(
    body: Any, model: ModelInfo, n_inputs: int, top_k: int | None = None
) -> str | None:
    """None when ``body`` is a valid /predict answer of ``model`` for ``n_inputs`` inputs.

    Otherwise a one-line reason: wrong model, batch of the wrong length, a top-k list of the wrong
    length or not best first, a label the model does not have, an index that does not match the
    label, or a score outside [0, 1].
    """
    if not isinstance(body, Mapping):
        return "response is not a JSON object"
    if body.get("model") != model.name:
        return f"model {body.get('model')!r} != {model.name!r}"
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != n_inputs:
        got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        return f"expected {n_inputs} prediction list(s), got {got}"
    for i, top in enumerate(predictions):
        if not isinstance(top, list) or not top:
            return f"input {i}: empty or malformed top-k list"
        if top_k is not None and len(top) != min(top_k, len(model.labels)):
            return f"input {i}: {len(top)} predictions for top_k={top_k}"
        for entry in top:
            reason = _check_entry(entry, model.labels)
            if reason:
                return f"input {i}: {reason}"
        scores = [entry["score"] for entry in top]
        if scores != sorted(scores, reverse=True):
            return f"input {i}: predictions are not best first"
    return None


def _check_entry(entry: Any, labels: tuple[str, ...]) -> str | None:
    if not isinstance(entry, Mapping):
        return "prediction is not an object"
    label, index, score = entry.get("label"), entry.get("index"), entry.get("score")
    if label not in labels:
        return f"label {label!r} is not one of the model's labels"
    if not isinstance(index, int) or not 0 <= index < len(labels) or labels[index] != label:
        return f"index {index!r} does not match label {label!r}"
    if not isinstance(score, (int, float)) or math.isnan(score) or not 0.0 <= score <= 1.0:
        return f"score {score!r} is outside [0, 1]"
    return None
