"""The fast JPEG path decodes exactly Pillow's pixels, and hands everything else to Pillow."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.contract.model_card import InputSpec, ResizeSpec
from service.contract.preprocess import image_to_uint8
from service.errors import BadRequest, PayloadTooLarge
from service.inputs import fastjpeg, images
from service.inputs.images import decode_uint8, open_image
from service.inputs.pipeline import load_batch

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "loadtest/data/cifar10").glob("*.jpg"))


def test_simplejpeg_is_installed() -> None:
    """A dependency of the service (pyproject.toml): the tests below compare its path with
    Pillow's, and the service without it decodes JPEGs slower."""
    assert fastjpeg.available()


def spec(color: str = "rgb", size: int = 32) -> InputSpec:
    channels = 3 if color == "rgb" else 1
    return InputSpec(
        name="x",
        shape=(channels, size, size),
        color=color,  # type: ignore[arg-type]
        resize=ResizeSpec(height=size, width=size, resample="bilinear"),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def jpeg(mode: str, size: tuple[int, int], seed: int = 0, **save: Any) -> bytes:
    """A JPEG of smooth noise (so that every DCT coefficient and the upsampling matter)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode)
    buf = io.BytesIO()
    image.save(buf, "JPEG", **save)
    return buf.getvalue()


def by_pillow(data: bytes, input_spec: InputSpec) -> np.ndarray:
    return image_to_uint8(Image.open(io.BytesIO(data)), input_spec)


VARIANTS = [
    ("RGB", (32, 32), {}),
    ("RGB", (32, 32), {"subsampling": 0, "quality": 95}),  # 4:4:4
    ("RGB", (32, 32), {"subsampling": 1}),  # 4:2:2
    ("RGB", (33, 17), {"subsampling": 2, "quality": 30}),  # 4:2:0, odd size
    ("RGB", (64, 48), {"progressive": True}),
    ("RGB", (40, 40), {"optimize": True, "restart_marker_blocks": 1}),
    ("RGB", (1, 1), {}),
    ("RGB", (200, 150), {}),  # resized to 32x32 after decoding
    ("L", (32, 32), {}),
    ("L", (45, 30), {"progressive": True}),
]


@pytest.mark.parametrize(("mode", "size", "save"), VARIANTS)
@pytest.mark.parametrize("color", ["rgb", "gray"])
def test_same_pixels_as_pillow(
    mode: str, size: tuple[int, int], save: dict[str, Any], color: str
) -> None:
    data = jpeg(mode, size, **save)
    input_spec = spec(color)
    opened = open_image(data, 10**6)
    assert (opened.width, opened.height) == size and opened.image is None  # header only
    np.testing.assert_array_equal(decode_uint8(opened, input_spec), by_pillow(data, input_spec))


def test_the_fast_path_does_not_touch_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pillow(*_: object) -> None:
        raise AssertionError("Pillow was used")

    monkeypatch.setattr(images, "_open_with_pillow", no_pillow)
    data = jpeg("RGB", (32, 32))
    batch = load_batch([open_image(data, 10**6)], spec())
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32


def test_colour_to_grey_and_cmyk_go_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    real = images._open_with_pillow

    def spy(data: bytes, what: str) -> Image.Image:
        used.append(what)
        return real(data, what)

    monkeypatch.setattr(images, "_open_with_pillow", spy)
    colour = jpeg("RGB", (32, 32))
    opened = open_image(colour, 10**6)
    assert opened.jpeg_colorspace == "YCbCr"
    # libjpeg's grey output of a colour JPEG is its Y channel; Pillow's is its own luma formula.
    np.testing.assert_array_equal(
        decode_uint8(opened, spec("gray")), by_pillow(colour, spec("gray"))
    )
    assert used == ["image"]
    cmyk = jpeg("CMYK", (16, 16))
    np.testing.assert_array_equal(
        decode_uint8(open_image(cmyk, 10**6), spec()), by_pillow(cmyk, spec())
    )
    assert len(used) == 2


def test_a_truncated_jpeg_is_a_400() -> None:
    data = jpeg("RGB", (64, 64), progressive=True)
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises(BadRequest) as err:
            load_batch([open_image(data[:cut], 10**6)], spec())
        assert err.value.code == "invalid_image"
    with pytest.raises(BadRequest):  # only the start of the header
        load_batch([open_image(data[:20], 10**6)], spec())


def test_declared_size_is_checked_before_decoding() -> None:
    data = jpeg("RGB", (64, 48))
    with pytest.raises(PayloadTooLarge, match="64x48"):
        open_image(data, 64 * 48 - 1)


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg("RGB", (32, 32))
    fast = load_batch([open_image(data, 10**6)], spec())
    monkeypatch.setattr(fastjpeg, "simplejpeg", None)
    opened = open_image(data, 10**6)
    assert opened.image is not None and opened.jpeg_colorspace is None
    np.testing.assert_array_equal(load_batch([opened], spec()), fast)


def test_the_sample_photos_decode_as_with_pillow() -> None:
    assert len(SAMPLES) >= 10
    for path in SAMPLES:
        data = path.read_bytes()
        np.testing.assert_array_equal(
            decode_uint8(open_image(data, 10**6), spec()), by_pillow(data, spec())
        )


def test_cifar10_test_jpegs_decode_as_with_pillow() -> None:
    root = Path(os.environ.get("ROCKETSERVE_CIFAR10", ROOT.parent / "shared/datasets/cifar10"))
    files = sorted((root / "test").glob("*/*.jpg"))[::5]
    if not files:
        pytest.skip(f"no CIFAR-10 JPEGs under {root}/test (set ROCKETSERVE_CIFAR10)")
    fast = [fastjpeg.decode(p.read_bytes(), "YCbCr", "rgb") for p in files]
    for path, pixels in zip(files, fast, strict=True):
        assert pixels is not None
        np.testing.assert_array_equal(pixels, by_pillow(path.read_bytes(), spec()), str(path))
