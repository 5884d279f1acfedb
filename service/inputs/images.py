"""Encoded images to uint8 pixels in a card's colour and size, checked before they are decoded.

``open_image`` reads only an image's header and refuses non-images and oversized declarations
(the decompression-bomb guard) before any pixel is decoded; ``decode_uint8`` then decodes a common
JPEG with libjpeg-turbo (``fastjpeg``) and anything else with Pillow, converting colour and size
exactly as the reference preprocessing (``service.contract.preprocess``) does.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.contract.model_card import InputSpec
from service.contract.preprocess import draft, draft_scale, image_to_uint8, resize_uint8
from service.errors import BadRequest, PayloadTooLarge
from service.inputs import fastjpeg

# Formats Pillow may decode: the common photo/scan formats, nothing exotic to attack.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# Every declared size is checked here against ROCKETSERVE_MAX_IMAGE_PIXELS before any decoding:
# Pillow's own, fixed guard would refuse first past 179 M pixels whatever that setting says,
# in its own words ("decompression bomb"), so it is off in the service's processes.
Image.MAX_IMAGE_PIXELS = None


@dataclass
class OpenedImage:
    """An image whose header has been read and checked; its pixels are not decoded yet.

    A JPEG the fast decoder reads (service.inputs.fastjpeg) keeps only its bytes and header fields
    (``image`` is None); any other image is a Pillow image opened lazily.
    """

    data: bytes
    what: str
    width: int
    height: int
    image: Image.Image | None = None
    jpeg_colorspace: str | None = None
    progressive: bool = False

    @property
    def pixels(self) -> int:
        """Declared width x height."""
        return self.width * self.height

    def decoded_pixels(self, spec: InputSpec) -> int:
        """Width x height this image is decoded at for ``spec``.

        A baseline JPEG far larger than the model's input is decoded smaller (``draft_scale``);
        anything else, a progressive JPEG included (libjpeg holds all its coefficients), at its
        full size.
        """
        jpeg = self.jpeg_colorspace is not None or (
            self.image is not None and self.image.format in ("JPEG", "MPO")
        )
        if not jpeg or self.progressive:
            return self.pixels
        scale = draft_scale(self.width, self.height, spec)
        return -(-self.width // scale) * -(-self.height // scale)


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
        progressive = fastjpeg.is_progressive(data)
        return OpenedImage(data, what, width, height, None, colorspace, progressive)
    image = _open_with_pillow(data, what)
    width, height = image.size
    _check_pixels(width, height, max_pixels, what)
    progressive = bool(image.info.get("progressive"))
    return OpenedImage(data, what, width, height, image=image, progressive=progressive)


def open_images(images: list[bytes], max_pixels: int) -> list[OpenedImage]:
    """open_image for each encoded image of a request."""
    several = len(images) > 1
    return [
        open_image(data, max_pixels, f"image {i}" if several else "image")
        for i, data in enumerate(images)
    ]


def check_decoded_pixels(opened: list[OpenedImage], spec: InputSpec, max_pixels: int) -> None:
    """Refuse (413) an image that would be decoded at more than ``max_pixels`` for ``spec``."""
    for item in opened:
        decoded = item.decoded_pixels(spec)
        if decoded > max_pixels:
            raise PayloadTooLarge(
                f"{item.what} of {item.width}x{item.height} pixels would be decoded at "
                f"{decoded} pixels, over the limit of {max_pixels} (refused before decoding; a "
                "baseline JPEG is decoded at up to 1/8 of its size, other formats at full size)",
                code="image_too_large",
            )


def decode_uint8(item: OpenedImage, spec: InputSpec) -> np.ndarray:
    """Decode one opened image to the spec's colour and size: uint8 [H, W, C].

    A JPEG far larger than the model's input is decoded at 1/2, 1/4 or 1/8 of its size
    (``draft_scale``); anything else at its full size. The decoded pixels are released before
    this returns (the item keeps only its bytes), so a request's images are never all decoded at
    once.
    """
    if item.jpeg_colorspace is not None:
        scale = draft_scale(item.width, item.height, spec)
        size = (item.width, item.height)
        pixels = fastjpeg.decode(item.data, item.jpeg_colorspace, spec.color, size, scale)
        if pixels is not None:
            return resize_uint8(pixels, spec)
    image, item.image = item.image, None
    if image is None:
        image = _open_with_pillow(item.data, item.what)
    try:
        try:
            draft(image, spec)
            image.load()
        except MemoryError:
            raise
        except Exception as exc:  # any: see _DECODER_FAULTS
            raise BadRequest(
                f"{item.what} is truncated or corrupt: {_fault(exc)}", code="invalid_image"
            ) from None
        try:
            return image_to_uint8(image, spec)
        except (OSError, ValueError, *_DECODER_FAULTS) as exc:
            raise BadRequest(
                f"{item.what}: mode {image.mode} cannot be converted to {spec.color}: "
                f"{_fault(exc)}",
                code="invalid_image",
            ) from None
    finally:
        image.close()


# Pillow decoding a malformed file raises more than OSError: a TIFF whose strip offsets are
# floats gives TypeError, other broken tags struct.error, IndexError, KeyError or
# ZeroDivisionError. Any of them is the client's file, not a fault of the service; decoding
# (Pillow alone) catches every exception but MemoryError, converting (our code too) these.
_DECODER_FAULTS = (TypeError, struct.error, IndexError, KeyError, ZeroDivisionError, EOFError)


def _fault(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
