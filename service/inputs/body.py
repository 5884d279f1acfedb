"""What a /predict body asks for: its content type read into images or a tensor, a model, top_k.

A multipart form (``file`` fields), a JSON object (``image``, ``images`` or ``tensor``) or a raw
``image/*`` body all become one ``PredictRequest``; nothing is decoded here yet. A body that
cannot be read is a 400, one that is readable but wrong a 422, an unknown content type a 415.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import parse_options_header

from service.errors import BadRequest, Unprocessable, UnsupportedMediaType
from service.inputs.multipart import split_form

# Routing by objective instead of a model name (service.repository.routing).
OBJECTIVE_KEYS = ("latency_budget_ms", "min_accuracy", "family", "fallback")
JSON_KEYS = frozenset({"image", "images", "tensor", "model", "top_k", *OBJECTIVE_KEYS})
# json.loads builds one Python object per value, and the smallest ones cost the most per byte of
# body: an empty array ~60 bytes for its 3, a short string ~50 for 5. A body needs few of them (a
# tensor has one array per row: N*C*H, 3,072 for 32 CIFAR-10 images; images and keys are a few
# dozen strings), so bodies with more are refused before parsing, which bounds what parsing
# costs to what numbers cost (docs/guarantees.md, "Memory per request is bounded").
MAX_JSON_CONTAINERS = 1 << 16
MAX_JSON_STRINGS = 1 << 12


@dataclass
class PredictRequest:
    """What a /predict body asks for, before model-specific decoding."""

    model: str | None = None
    top_k: Any = None
    images: list[bytes] = field(default_factory=list)
    tensor: Any = None
    objective: dict[str, Any] = field(default_factory=dict)  # routing fields given in the body

    def input_count(self) -> int:
        """How many inputs the request carries, before any is decoded (what the router weighs):
        its images, or the first axis of an [N,C,H,W] tensor (a [C,H,W] one is one input)."""
        if self.images:
            return len(self.images)
        depth, item = 0, self.tensor
        while isinstance(item, list) and depth < 4:
            depth += 1
            item = item[0] if item else None
        return len(self.tensor) if depth == 4 else 1


def parse_body(content_type: str | None, body: bytes) -> PredictRequest:
    """Split a body into model, top_k and images or tensor according to its content type."""
    if not body:
        raise BadRequest("the request body is empty", code="empty_body")
    media, options = parse_options_header(content_type or "")
    media_type = media.decode("latin-1").lower()
    if media_type == "multipart/form-data":
        return _parse_multipart(body, options.get(b"boundary"))
    if media_type == "application/json" or media_type.endswith("+json"):
        return _parse_json(body)
    if media_type.startswith("image/"):
        return PredictRequest(images=[body])
    raise UnsupportedMediaType(
        f"content type {media_type or '(none)'!r} is not supported; send multipart/form-data, "
        "application/json or an image/* body",
        code="unsupported_media_type",
    )


def _parse_multipart(body: bytes, boundary: bytes | None) -> PredictRequest:
    if not boundary:
        raise BadRequest("multipart body without a boundary", code="invalid_multipart")
    parts = split_form(body, boundary)
    request = PredictRequest()
    for name, data in parts:
        if name == "file":
            request.images.append(data)
        elif name == "model":
            request.model = data.decode("utf-8", "replace").strip()
        elif name == "top_k":
            request.top_k = data.decode("utf-8", "replace").strip()
        else:
            raise Unprocessable(
                f"unknown form field {name!r}; use 'file', 'model', 'top_k'", code="unknown_field"
            )
    if not request.images:
        raise BadRequest("multipart body has no 'file' field", code="missing_input")
    return request


def check_json_size(body: bytes) -> None:
    """Refuse a JSON body whose arrays, objects or strings would cost far more memory as Python
    objects than the body's bytes (400 invalid_json), before it is parsed."""
    # Counted on the bytes: base64 has none of these, and UTF-8 bytes of other characters are
    # >= 0x80, so a character inside a string is counted only in UTF-16/32 bodies (over-counted).
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        raise BadRequest(
            f"JSON body holds {containers} arrays and objects, over the limit of "
            f"{MAX_JSON_CONTAINERS} (a tensor needs one per row)",
            code="invalid_json",
        )
    strings = body.count(b'"') // 2
    if strings > MAX_JSON_STRINGS:
        raise BadRequest(
            f"JSON body holds {strings} strings, over the limit of {MAX_JSON_STRINGS}",
            code="invalid_json",
        )


def _parse_json(body: bytes) -> PredictRequest:
    check_json_size(body)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError:
        # Valid JSON, but an integer of more digits than int() converts (4,300 by default).
        raise BadRequest(
            f"JSON body holds an integer of more than {sys.get_int_max_str_digits()} digits",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise BadRequest("JSON body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise Unprocessable("JSON body must be an object", code="invalid_json")
    unknown = set(data) - JSON_KEYS
    if unknown:
        raise Unprocessable(
            f"unknown JSON field(s) {sorted(unknown)}; allowed: {sorted(JSON_KEYS)}",
            code="unknown_field",
        )
    given = [k for k in ("image", "images", "tensor") if k in data]
    if len(given) != 1:
        raise Unprocessable(
            "JSON body needs exactly one of 'image', 'images' or 'tensor'", code="missing_input"
        )
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise Unprocessable("'model' must be a string", code="invalid_model")
    request = PredictRequest(
        model=model,
        top_k=data.get("top_k"),
        objective={k: data[k] for k in OBJECTIVE_KEYS if k in data},
    )
    if "tensor" in data:
        if data["tensor"] is None:  # None is how a request without a tensor is told apart
            raise Unprocessable("'tensor' must be an array of numbers", code="invalid_tensor")
        request.tensor = data["tensor"]
        return request
    encoded = [data["image"]] if "image" in data else data["images"]
    if not isinstance(encoded, list) or not encoded:
        raise Unprocessable("'images' must be a non-empty list of strings", code="missing_input")
    request.images = [_b64(item, i) for i, item in enumerate(encoded)]
    return request


def _b64(item: Any, index: int) -> bytes:
    if not isinstance(item, str):
        raise Unprocessable(f"image {index} must be a base64 string", code="invalid_base64")
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index} is not valid base64", code="invalid_base64") from None


def parse_top_k(raw: Any, default: int, n_labels: int) -> int:
    """top_k as an int in 1..n_labels, else 422."""
    if raw is None or raw == "":
        return min(default, n_labels)
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise Unprocessable("top_k must be an integer", code="invalid_top_k")
    try:
        k = int(raw)
    except ValueError:
        raise Unprocessable(
            f"top_k must be an integer, got {raw!r}", code="invalid_top_k"
        ) from None
    if not 1 <= k <= n_labels:
        raise Unprocessable(
            f"top_k must be between 1 and {n_labels} (the number of labels), got {k}",
            code="invalid_top_k",
        )
    return k
