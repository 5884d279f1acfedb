"""Memory per request is bounded: peak extra RSS <= 16 B x decoded pixels + 16 x body + 32 MiB.

The worst cases are sent to a real ``python -m service`` (one CIFAR-10 model of ``models/``,
RGB 32x32): its peak resident memory is the kernel's high-water mark (``VmHWM``), reset to the
current RSS right before the request (``echo 5 > /proc/PID/clear_refs``), so a peak shorter than
any sampling interval is caught and nothing before the request counts. Each case gets a fresh
process, so memory an earlier case freed (and the allocator kept) cannot hide a later peak. The
decoding paths that save memory are checked here too for giving the same pixels as before.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.contract.model_card import InputSpec, ResizeSpec
from service.contract.preprocess import draft_scale, image_to_uint8
from service.errors import PayloadTooLarge
from service.inputs import fastjpeg
from service.inputs.images import check_decoded_pixels, decode_uint8, open_image
from service.inputs.pipeline import load_batch
from service.settings import Settings
from tests.support.cli import ROOT
from tests.support.server import running_service
from tests.support.zoo import smallest_student

MiB = 1 << 20
BYTES_PER_PIXEL = 16  # WebP's decoding (libwebp's canvas, a copy, the image, RGB): the most
BYTES_PER_BODY_BYTE = 16  # JSON numbers: ~32 bytes of Python objects for every 2-4 body bytes
FIXED = 32 * MiB
MODEL = smallest_student(precision="fp32").name  # a CIFAR-10 student, 3 x 32 x 32 input
LIMIT = Settings.model_fields["max_decoded_pixels"].default  # 4096 x 4096


def bound(decoded_pixels: int, body_bytes: int) -> int:
    """The documented bound on a request's peak extra RSS (docs/guarantees.md)."""
    return BYTES_PER_PIXEL * decoded_pixels + BYTES_PER_BODY_BYTE * body_bytes + FIXED


def spec(color: str = "rgb", size: int = 32, resample: str = "bilinear") -> InputSpec:
    channels = 3 if color == "rgb" else 1
    return InputSpec(
        name="x",
        shape=(channels, size, size),
        color=color,  # type: ignore[arg-type]
        resize=ResizeSpec(height=size, width=size, resample=resample),  # type: ignore[arg-type]
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """Smooth RGB content that PNG, TIFF and WebP compress to little."""
    x = np.linspace(0, 255, width).astype(np.uint8)
    y = np.linspace(0, 255, height).astype(np.uint8)
    red, green = np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width))
    return Image.fromarray(np.dstack([red, green, np.full((height, width), 128, np.uint8)]))


def grey16(width: int, height: int) -> Image.Image:
    return Image.fromarray(
        np.broadcast_to(np.linspace(0, 65535, width), (height, width)).astype(np.uint16)
    )


def form(parts: list[bytes]) -> bytes:
    head = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    return b"".join(head + part + b"\r\n" for part in parts) + b"--b0--\r\n"


def json_tensor(n: int) -> bytes:
    values = np.random.default_rng(0).normal(0, 1, (n, 3, 32, 32)).astype(np.float32)
    return json.dumps({"tensor": values.astype(np.float64).tolist()}).encode()


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


# (case, content type, body builder, decoded pixels of its largest image, status)
WORST: list[tuple[str, str, Callable[[], bytes], int, int]] = [
    (
        "16-bit PNG at the decoded-pixel limit (4096x4096 I;16)",
        "image/png",
        lambda: encode(grey16(4096, 4096), "PNG"),
        LIMIT,
        200,
    ),
    (
        "WebP at the limit (4096x4096 RGBA), the costliest format per pixel",
        "image/webp",
        lambda: encode(gradient(4096, 4096).convert("RGBA"), "WEBP", lossless=True),
        LIMIT,
        200,
    ),
    (
        "40 MP baseline JPEG (7296x5472), decoded at 1/8: 912x684",
        "image/jpeg",
        lambda: encode(gradient(7296, 5472), "JPEG", quality=90),
        912 * 684,
        200,
    ),
    (
        "progressive JPEG at the limit (4096x4096): libjpeg keeps all its coefficients",
        "image/jpeg",
        lambda: encode(gradient(4096, 4096), "JPEG", quality=90, progressive=True),
        LIMIT,
        200,
    ),
    (
        "32 images in one form: 1 MP RGBA PNGs (32 MP in all)",
        "multipart/form-data; boundary=b0",
        lambda: form([encode(gradient(1024, 1024).convert("RGBA"), "PNG")] * 32),
        1024 * 1024,
        200,
    ),
    (
        "the largest JSON tensor a request may carry (32 x 3 x 32 x 32)",
        "application/json",
        lambda: json_tensor(32),
        0,
        200,
    ),
    (
        "a JSON tensor at the body limit (10 MiB of '1.5,'): parsed, then refused",
        "application/json",
        lambda: b'{"tensor": [' + b"1.5," * (10 * MiB // 4 - 8) + b"0]}",
        0,
        422,
    ),
    (
        "a 10 MiB JSON body of '[],': refused before parsing",
        "application/json",
        lambda: b'{"tensor": [' + b"[]," * (10 * MiB // 3 - 8) + b"[]]}",
        0,
        400,
    ),
    (
        "40 MP 16-bit PNG: refused before decoding",
        "image/png",
        lambda: encode(grey16(7296, 5472), "PNG"),
        0,
        413,
    ),
]


@pytest.fixture(scope="module")
def cifar_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository of one committed CIFAR-10 model (RGB 32x32)."""
    repo = tmp_path_factory.mktemp("cifar")
    shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
    return repo


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("case", "ctype", "build", "pixels", "status"), WORST, ids=[w[0] for w in WORST]
)
def test_peak_memory_of_a_worst_case_request_is_within_the_bound(
    cifar_repo: Path, case: str, ctype: str, build: Callable[[], bytes], pixels: int, status: int
) -> None:
    body = build()
    env = {"ROCKETSERVE_LOG_LEVEL": "warning", "ROCKETSERVE_REQUEST_TIMEOUT_MS": "120000"}
    with running_service(cifar_repo, env) as (url, process):
        clear_refs = Path(f"/proc/{process.pid}/clear_refs")
        with httpx.Client(base_url=url, timeout=120) as client:
            warm = encode(gradient(32, 32), "JPEG")
            warmed = client.post("/predict", content=warm, headers={"content-type": "image/jpeg"})
            assert warmed.status_code == 200
            try:
                clear_refs.write_text("5")  # VmHWM := VmRSS
            except OSError as exc:
                pytest.skip(f"cannot reset the peak RSS of the service ({exc})")
            before = _status(process.pid, "VmRSS")
            started = time.monotonic()
            r = client.post("/predict", content=body, headers={"content-type": ctype})
            seconds = time.monotonic() - started
            growth = _status(process.pid, "VmHWM") - before
    limit = bound(pixels, len(body))
    print(
        f"\n{case}: {r.status_code}, body {len(body) / MiB:.2f} MiB, "
        f"decoded {pixels / 1e6:.2f} MP, peak extra RSS {growth / MiB:.1f} MiB "
        f"(bound {limit / MiB:.1f} MiB), {seconds:.2f} s"
    )
    assert r.status_code == status, r.text
    assert growth <= limit


def reference_8bit(image: Image.Image) -> np.ndarray:
    """The high-bit conversion as it was first written, in int64 and float64 arithmetic."""
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        hi = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        scaled = np.nan_to_num(arr / hi * 255.0, nan=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    arr = np.asarray(image, dtype=np.int64)
    return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)


def high_bit_images(width: int, height: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    floats = rng.normal(0.5, 2.0, (height, width)).astype(np.float32)
    floats.flat[:3] = [np.nan, np.inf, -np.inf]
    return [
        Image.fromarray(u16),
        Image.frombytes("I;16B", (width, height), u16.astype(">u2").tobytes()),
        Image.fromarray(rng.integers(-100_000, 200_000, (height, width)).astype(np.int32)),
        Image.fromarray(floats),
        Image.fromarray(np.abs(floats[:, ::-1]).clip(0, 1)),  # a 0..1 float image
    ]


@pytest.mark.parametrize("size", [(7, 3), (33, 17), (1500, 1400)])  # the last in two bands
def test_high_bit_images_give_the_pixels_of_the_wide_arithmetic(size: tuple[int, int]) -> None:
    for image in high_bit_images(*size):
        for color in ("gray", "rgb"):
            eight_bit = Image.fromarray(reference_8bit(image)).convert(
                "RGB" if color == "rgb" else "L"
            )
            want = np.asarray(eight_bit.resize((32, 32), Image.Resampling.BILINEAR))
            got = image_to_uint8(image, spec(color))
            np.testing.assert_array_equal(got.reshape(want.shape), want, f"{image.mode} {color}")


def test_high_bit_images_are_never_widened() -> None:
    # One int64 or float64 copy of a 2000x2000 image is 32 MB (8 bytes per pixel). What numpy
    # allocates here (tracemalloc sees it): the 8-bit result (1 byte per pixel) and one band's
    # temporaries (~10 MB, whatever the image's size), under 4 bytes per pixel in all.
    for image in high_bit_images(2000, 2000):
        tracemalloc.start()
        try:
            image_to_uint8(image, spec())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        print(f"{image.mode}: numpy peak {peak / 2000 / 2000:.2f} bytes per pixel")
        assert peak < 4 * 2000 * 2000, (image.mode, peak)


def palette_and_grey_images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    with_index = rgb.quantize(16)
    with_index.info["transparency"] = 3
    with_bytes = rgb.quantize(16)
    with_bytes.info["transparency"] = bytes(range(0, 256, 16))
    grey_alpha = Image.fromarray(rng.integers(0, 256, (45, 61, 2), dtype=np.uint8), "LA")
    return [
        rgb.quantize(64),
        with_index,
        with_bytes,
        grey_alpha,
        rgb.convert("1"),
        rgb.convert("L"),
    ]


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos", "box"])
def test_palette_and_grey_shortcuts_give_the_same_pixels(resample: str) -> None:
    # Palette images convert straight to RGB (not through a full-size RGBA), and grey ones are
    # resized before their RGB copy: the pixels are those of the long way round.
    filters = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4}
    for image in palette_and_grey_images():
        for color in ("rgb", "gray"):
            target = "RGB" if color == "rgb" else "L"
            long_way = (
                image.convert("RGBA").convert(target)
                if image.mode == "P"
                else image.convert(target)
            )
            want = np.asarray(long_way.resize((32, 32), filters[resample]))
            got = image_to_uint8(image, spec(color, 32, resample))
            np.testing.assert_array_equal(got.reshape(want.shape), want, f"{image.mode} {color}")


def test_draft_scale_keeps_twice_the_model_input() -> None:
    s = spec(size=32)
    assert draft_scale(32, 32, s) == 1  # CIFAR-10's own size: decoded as it is
    assert draft_scale(127, 500, s) == 1  # under 2 x 2 x 32 on one axis
    assert draft_scale(128, 128, s) == 2
    assert draft_scale(640, 427, s) == 4  # 160x107 decoded, at least 64x64
    assert draft_scale(7296, 5472, s) == 8
    assert (
        draft_scale(7296, 5472, spec(size=224)) == 8
        and draft_scale(1000, 1000, spec(size=224)) == 2
    )


@pytest.mark.parametrize(
    ("mode", "size", "options"),
    [
        ("RGB", (640, 427), {}),
        ("RGB", (1001, 799), {"subsampling": 0}),
        ("RGB", (513, 300), {"progressive": True}),
        ("RGB", (640, 480), {"subsampling": 1}),
        ("L", (700, 500), {}),
    ],
)
@pytest.mark.parametrize("color", ["rgb", "gray"])
def test_a_large_jpeg_is_decoded_small_with_the_pixels_of_pillows_draft(
    mode: str, size: tuple[int, int], options: dict[str, Any], color: str
) -> None:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).convert(mode)
    data = encode(image, "JPEG", **options)
    scale = draft_scale(*size, spec(color))
    assert scale > 1
    if color == "rgb" or mode == "L":  # the libjpeg-turbo path decodes straight at the scale
        colorspace = "Gray" if mode == "L" else "YCbCr"
        small = fastjpeg.decode(data, colorspace, color, size, scale)
        assert small is not None and small.shape[:2] == (-(-size[1] // scale), -(-size[0] // scale))
    # The reference: Pillow's own draft, asked here for twice the model's input, decodes at
    # 1/scale; loaded, the service's conversion and resize can no longer draft it again.
    reference = Image.open(io.BytesIO(data))
    reference.draft(None, (64, 64))
    reference.load()
    assert reference.size == (-(-size[0] // scale), -(-size[1] // scale))
    by_pillow = image_to_uint8(reference, spec(color))
    opened = open_image(data, 10**8)
    np.testing.assert_array_equal(decode_uint8(opened, spec(color)), by_pillow)


@pytest.mark.parametrize("size", [(32, 32), (33, 17), (127, 127), (100, 300)])
def test_a_jpeg_near_the_model_size_decodes_as_before(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    data = encode(
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), "JPEG"
    )
    full = Image.open(io.BytesIO(data))
    full.load()  # loaded: no draft can apply
    want = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decode_uint8(open_image(data, 10**8), spec()), want)


def _declaring(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header declares another size (its pixels are not read here)."""
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) + 5
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def test_the_decoded_pixel_limit_counts_what_is_decoded() -> None:
    small = gradient(16, 16)
    baseline = _declaring(encode(small, "JPEG"), 7296, 5472)
    progressive = _declaring(encode(small, "JPEG", progressive=True), 7296, 5472)
    check_decoded_pixels([open_image(baseline, 40_000_000)], spec(), LIMIT)  # 912x684 decoded
    with pytest.raises(PayloadTooLarge, match="decoded"):  # all its coefficients are kept
        check_decoded_pixels([open_image(progressive, 40_000_000)], spec(), LIMIT)
    png = encode(Image.new("L", (4097, 4096)), "PNG")
    check_decoded_pixels(
        [open_image(encode(Image.new("L", (4096, 4096)), "PNG"), 10**8)], spec(), LIMIT
    )
    with pytest.raises(PayloadTooLarge) as err:
        check_decoded_pixels([open_image(png, 10**8)], spec(), LIMIT)
    assert err.value.code == "image_too_large"
    assert fastjpeg.is_progressive(progressive) and not fastjpeg.is_progressive(baseline)


def test_each_decoded_image_is_released_before_the_next() -> None:
    # A request's images are decoded one after the other, and each Pillow image is closed (its
    # pixels freed) once resized: 32 big images never sit decoded side by side.
    opened = [
        open_image(encode(gradient(300, 200).convert("RGBA"), "PNG"), 10**8) for _ in range(4)
    ]
    images = [item.image for item in opened]
    assert load_batch(opened, spec()).shape == (4, 3, 32, 32)
    assert all(item.image is None for item in opened)
    assert all(image is not None and getattr(image, "fp", 0) is None for image in images)
