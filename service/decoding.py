"""Read a /predict body (multipart, JSON image/images/tensor, raw image/*) into a model batch.

Everything that can be wrong with a request is found here, before it is queued, so a bad request
never fails a batch: the size limit is enforced while the body streams in, an image's declared
pixel count is checked before it is decoded, and tensors are checked for shape, dtype and
finiteness.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header

from service import fastjpeg
from service.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from service.model_card import InputSpec
from service.multipart import split_form
from service.preprocess import image_to_uint8, normalize_uint8, resize_uint8

# Formats Pillow may decode: the common photo/scan formats, nothing exotic to attack.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
JSON_KEYS = frozenset({"image", "images", "tensor", "model", "top_k"})


@dataclass
class PredictRequest:
    """What a /predict body asks for, before model-specific decoding."""

    model: str | None = None
    top_k: Any = None
    images: list[bytes] = field(default_factory=list)
    tensor: Any = None


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


def _parse_json(body: bytes) -> PredictRequest:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
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
    request = PredictRequest(model=model, top_k=data.get("top_k"))
    if "tensor" in data:
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


@dataclass
class OpenedImage:
    """An image whose header has been read and checked; its pixels are not decoded yet.

    A JPEG the fast decoder reads (service.fastjpeg) keeps only its bytes and header fields
    (``image`` is None); any other image is a Pillow image opened lazily.
    """

    data: bytes
    what: str
    width: int
    height: int
    image: Image.Image | None = None
    jpeg_colorspace: str | None = None

    @property
    def pixels(self) -> int:
        """Declared width x height."""
        return self.width * self.height


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{what} declares {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (refused before decoding)",
            code="image_too_large",
        )


def _open_with_pillow(data: bytes, what: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}", code="image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise BadRequest(
            f"{what} is not a readable image (supported: {', '.join(IMAGE_FORMATS)})",
            code="invalid_image",
        ) from None


def open_image(data: bytes, max_pixels: int, what: str = "image") -> OpenedImage:
    """Read an image's header only; refuse non-images and oversized declarations (no decoding)."""
    if not data:
        raise BadRequest(f"{what} is empty", code="empty_image")
    header = fastjpeg.jpeg_size(data)
    if header is not None:
        width, height, colorspace = header
        _check_pixels(width, height, max_pixels, what)
        return OpenedImage(data, what, width, height, jpeg_colorspace=colorspace)
    image = _open_with_pillow(data, what)
    width, height = image.size
    _check_pixels(width, height, max_pixels, what)
    return OpenedImage(data, what, width, height, image=image)


def open_images(images: list[bytes], max_pixels: int) -> list[OpenedImage]:
    """open_image for each encoded image of a request."""
    several = len(images) > 1
    return [
        open_image(data, max_pixels, f"image {i}" if several else "image")
        for i, data in enumerate(images)
    ]


def decode_uint8(item: OpenedImage, spec: InputSpec) -> np.ndarray:
    """Decode one opened image to the spec's colour and size: uint8 [H, W, C]."""
    if item.jpeg_colorspace is not None:
        pixels = fastjpeg.decode(item.data, item.jpeg_colorspace, spec.color)
        if pixels is not None:
            return resize_uint8(pixels, spec)
    image = item.image if item.image is not None else _open_with_pillow(item.data, item.what)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(
            f"{item.what} is truncated or corrupt: {exc}", code="invalid_image"
        ) from None
    try:
        return image_to_uint8(image, spec)
    except (OSError, ValueError) as exc:
        raise BadRequest(
            f"{item.what}: mode {image.mode} cannot be converted to {spec.color}: {exc}",
            code="invalid_image",
        ) from None


def load_batch(opened: list[OpenedImage], spec: InputSpec) -> np.ndarray:
    """Decode and preprocess opened images into the model's batch [N, C, H, W]."""
    if len(opened) == 1:
        return normalize_uint8(decode_uint8(opened[0], spec)[None], spec)
    return normalize_uint8(np.stack([decode_uint8(item, spec) for item in opened]), spec)


def warm_up_decoders(spec: InputSpec | None = None) -> None:
    """Load Pillow's format plugins (and the spec's decode path) before the first request."""
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (2, 2)).save(buf, fmt)
        Image.open(io.BytesIO(buf.getvalue())).load()
        if spec is not None:
            load_batch([open_image(buf.getvalue(), 4)], spec)


def tensor_to_batch(value: Any, spec: InputSpec) -> np.ndarray:
    """Check an already preprocessed tensor ([C,H,W] or [N,C,H,W]) and return it as a batch."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise Unprocessable(
            "tensor is not a rectangular array of numbers", code="invalid_tensor"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise Unprocessable(
            f"tensor must hold numbers, got {arr.dtype.name} values", code="invalid_tensor"
        )
    want = tuple(spec.shape)
    if arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise Unprocessable(
            f"tensor must have rank 3 [C,H,W] or 4 [N,C,H,W], got rank {arr.ndim}",
            code="invalid_tensor",
        )
    if tuple(arr.shape[1:]) != want or arr.shape[0] < 1:
        raise Unprocessable(
            f"tensor shape {list(arr.shape)} does not match the model's [N, {want[0]}, "
            f"{want[1]}, {want[2]}] (N >= 1)",
            code="invalid_tensor",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: caught
        batch = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
    if not np.isfinite(batch).all():
        raise Unprocessable("tensor contains NaN or infinity", code="invalid_tensor")
    return batch
