"""Request body to model batch: the one pipeline every input form goes through, in order.

body (``body.parse_body``) -> images (``images.open_images`` checks headers, ``decode_uint8``
decodes) -> tensor (``contract.preprocess.normalize_uint8``), or body -> tensor
(``tensors.tensor_to_batch``) for an already preprocessed tensor. ``batch_from_images`` and
``batch_from_tensor`` are the entries per input form; ``to_batch`` picks one for a parsed request.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from service.contract.model_card import InputSpec
from service.contract.preprocess import normalize_uint8
from service.errors import BadRequest, PayloadTooLarge
from service.inputs.body import PredictRequest
from service.inputs.images import (
    OpenedImage,
    check_decoded_pixels,
    decode_uint8,
    open_image,
    open_images,
)
from service.inputs.tensors import tensor_to_batch
from service.settings import Settings

# Requests declaring more pixels than this are decoded in a worker thread so that large images
# never block the event loop; small ones are decoded inline, cheaper than a thread hop.
INLINE_DECODE_PIXELS = 256 * 256


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


def batch_from_tensor(value: object, spec: InputSpec, max_inputs: int) -> np.ndarray:
    """The model batch of a preprocessed tensor ([C,H,W] or [N,C,H,W]), at most ``max_inputs``."""
    batch = tensor_to_batch(value, spec)
    _check_count(len(batch), max_inputs)
    return batch


async def batch_from_images(
    images: list[bytes],
    spec: InputSpec,
    max_inputs: int,
    max_pixels: int,
    max_decoded_pixels: int,
) -> np.ndarray:
    """The model batch of encoded images; big images are decoded off the event loop.

    Every header is checked (declared and decoded size) before any image is decoded, and the
    images are decoded one after the other, each released once resized.
    """
    if not images:
        raise BadRequest("the request has no image", code="missing_input")
    _check_count(len(images), max_inputs)
    opened = open_images(images, max_pixels)
    check_decoded_pixels(opened, spec, max_decoded_pixels)
    if sum(item.pixels for item in opened) > INLINE_DECODE_PIXELS:
        return await asyncio.to_thread(load_batch, opened, spec)
    return load_batch(opened, spec)


async def to_batch(request: PredictRequest, spec: InputSpec, settings: Settings) -> np.ndarray:
    """The model batch of a parsed /predict request, whichever form its inputs came in."""
    limit = settings.max_inputs_per_request
    if request.tensor is not None:
        return batch_from_tensor(request.tensor, spec, limit)
    return await batch_from_images(
        request.images, spec, limit, settings.max_image_pixels, settings.max_decoded_pixels
    )


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"at most {limit} inputs per request", code="too_many_inputs")
