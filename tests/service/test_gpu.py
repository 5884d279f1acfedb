"""On an NVIDIA GPU: the CUDA provider, IO binding, fp16 and batching through the service.

The tests marked ``gpu`` skip, with the reason, where ONNX Runtime has no CUDAExecutionProvider
(onnxruntime, not onnxruntime-gpu; or no GPU). ``scripts/gpu-check.sh`` runs them on a GPU
machine with ``ROCKETSERVE_GPU_REQUIRED=1``, which turns every such skip into a failure.

On the GPU, float32 matrix products may run in TF32 on tensor cores (Ampere and newer), about
three significant digits, and a batch of another size may take other kernels: GPU answers are
compared with CPU answers, and with CUDA answers of another batch size, at that precision; with
CUDA answers of the same batch (IO binding or not) at float32's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from loadtest.served_vs_raw import RawOrt, repository_of_one
from service.contract.model_card import ModelCard, model_dirs, model_file, read_manifest
from service.contract.preprocess import normalize_uint8
from service.http.app import create_app
from service.inference.predictions import softmax
from service.inference.session import CPU, CUDA, OnnxModel, choose_provider
from service.settings import Settings
from tests.support.cli import ROOT
from tests.support.onnx_repo import digits_uint8_split

pytestmark = pytest.mark.timeout(180)

HAVE_CUDA = CUDA in ort.get_available_providers()
REQUIRED = os.environ.get("ROCKETSERVE_GPU_REQUIRED") == "1"
NO_CUDA = (
    f"no CUDA: ONNX Runtime {ort.__version__} offers {', '.join(ort.get_available_providers())} "
    "without CUDAExecutionProvider (needs onnxruntime-gpu, alone, and an NVIDIA GPU; "
    "scripts/gpu-check.sh sets both up)"
)

needs_cuda = pytest.mark.skipif(not HAVE_CUDA and not REQUIRED, reason=NO_CUDA)


@pytest.fixture
def cuda() -> None:
    """Fails (instead of skipping) where the GPU is required but CUDA is missing."""
    if not HAVE_CUDA:
        pytest.fail(NO_CUDA)


def model(repo: Path, name: str) -> tuple[ModelCard, Path]:
    card = read_manifest(repo / name)
    return card, model_file(repo / name, card.version)


def digits_inputs(card: ModelCard) -> np.ndarray:
    """The digits test split as the model's input [N, 1, 8, 8] (float32)."""
    _, x_te, _, _ = digits_uint8_split()
    return normalize_uint8(x_te, card.input)


def close_to_cpu(gpu: np.ndarray, cpu: np.ndarray) -> None:
    """Logits within TF32 precision of the CPU's, the same class first for nearly every row."""
    scale = max(1.0, float(np.max(np.abs(cpu))))
    assert float(np.max(np.abs(gpu - cpu))) < 1e-2 * scale
    assert np.mean(gpu.argmax(1) == cpu.argmax(1)) >= 0.99


# --- the CUDA provider, in ONNX Runtime alone ------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_auto_chooses_cuda_and_the_session_runs_there(cuda: None, digits_repo: Path) -> None:
    assert choose_provider("auto") == CUDA
    assert choose_provider("cuda") == CUDA
    assert choose_provider("cpu") == CPU
    card, path = model(digits_repo, "digits-slow")
    served = OnnxModel(path, card, choose_provider("auto"))
    # ORT falls back to CPU, with only a warning, when CUDA or cuDNN libraries are missing.
    assert served.provider == CUDA
    assert served.session.get_providers()[0] == CUDA
    # cuDNN picks each convolution's algorithm by heuristic, not by timing them all per shape
    assert served.session.get_provider_options()[CUDA]["cudnn_conv_algo_search"] == "HEURISTIC"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 7, 64, 360])
def test_io_binding_matches_the_plain_run(cuda: None, digits_repo: Path, batch: int) -> None:
    card, path = model(digits_repo, "digits-slow")
    x = digits_inputs(card)[:batch]
    bound = OnnxModel(path, card, CUDA, io_binding=True)
    plain = OnnxModel(path, card, CUDA, io_binding=False)
    on_cpu = OnnxModel(path, card, CPU)
    assert bound.provider == plain.provider == CUDA
    got = bound(x)
    assert got.shape == (batch, len(card.labels)) and got.dtype == np.float32
    # The same kernels on the same shapes: equal up to float32 rounding.
    np.testing.assert_allclose(got, plain(x), rtol=1e-4, atol=1e-4)
    close_to_cpu(got, on_cpu(x))


@pytest.mark.gpu
@needs_cuda
def test_fp16_on_the_gpu_matches_fp32(cuda: None, digits_repo: Path, tmp_path: Path) -> None:
    from export.quantize import convert_fp16  # the variant export/ ships for GPUs

    card, path = model(digits_repo, "digits-slow")
    half_path = convert_fp16(path, tmp_path / "fp16.onnx")
    fp32 = OnnxModel(path, card, CUDA)
    fp16 = OnnxModel(half_path, card, CUDA)
    assert fp16.provider == CUDA
    x = digits_inputs(card)
    _, _, _, labels = digits_uint8_split()
    full, half = fp32(x), fp16(x)
    assert half.dtype == np.float32  # float32 inputs and outputs kept around half compute
    # The same bounds as the CPU test of the fp16 variant (tests/export/test_quantize.py).
    assert float(np.max(np.abs(full - half))) < 0.05 * max(1.0, float(np.max(np.abs(full))))
    assert abs(np.mean(half.argmax(1) == labels) - np.mean(full.argmax(1) == labels)) <= 0.005
    assert np.mean(half.argmax(1) == full.argmax(1)) >= 0.99


# --- the service on CUDA ---------------------------------------------------------------------


async def predict_concurrently(
    settings: Settings, model_name: str, tensors: np.ndarray
) -> tuple[list[dict], dict]:
    """Every tensor as its own request, all at once, to an in-process app; the answers (each
    one's scores by class index and its batch size) and /models/<name>."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            replies = await asyncio.gather(
                *(
                    c.post(f"/predict?model={model_name}&top_k=10", json={"tensor": t.tolist()})
                    for t in tensors
                )
            )
            described = (await c.get(f"/models/{model_name}")).json()
    assert all(r.status_code == 200 for r in replies), replies[0].text
    return [r.json() for r in replies], described


def scores(answer: dict) -> np.ndarray:
    """The probabilities of one single-input answer, by class index."""
    by_index = {p["index"]: p["score"] for p in answer["predictions"][0]}
    return np.asarray([by_index[i] for i in range(len(by_index))])


@pytest.mark.gpu
@needs_cuda
async def test_the_service_batches_concurrent_requests_on_cuda(
    cuda: None, make_settings: Callable[..., Settings], digits_repo: Path
) -> None:
    card, path = model(digits_repo, "digits-slow")
    tensors = digits_inputs(card)[:96]
    settings = make_settings(
        provider="cuda", max_queue_delay_ms=20, inline_inference_max_ms=0, max_batch_size=32
    )
    answers, described = await predict_concurrently(settings, "digits-slow", tensors)

    assert all(v["provider"] == CUDA for v in described["versions"])
    assert max(a["batch_size"] for a in answers) > 1  # concurrent requests shared batches
    served = np.stack([scores(a) for a in answers])
    # Each caller got its own answer: ONNX Runtime on CUDA running that input alone. A batch of
    # another size may take other kernels (TF32 or not): equal to two or three digits (on an
    # H200 with onnxruntime-gpu 1.31, up to 2.6e-3 apart on 7 of 960 probabilities).
    alone = OnnxModel(path, card, CUDA)
    expected = np.concatenate([softmax(alone(t[None])) for t in tensors])
    np.testing.assert_allclose(served, expected, rtol=0, atol=5e-3)
    assert np.mean(served.argmax(1) == expected.argmax(1)) >= 0.99
    close_to_cpu(served, softmax(OnnxModel(path, card, CPU)(tensors)))


# --- the GPU bench, checked where it can be (any machine) ------------------------------------


def test_the_bench_serves_only_the_measured_model(digits_repo: Path, tmp_path: Path) -> None:
    repo = repository_of_one(digits_repo, "digits-slow", tmp_path)
    assert [d.name for d in model_dirs(repo)] == ["digits-slow"]
    assert read_manifest(repo / "digits-slow").name == "digits-slow"


@pytest.mark.skipif(HAVE_CUDA, reason="CUDA is available here")
def test_the_bench_refuses_cuda_it_cannot_use(digits_repo: Path) -> None:
    card, path = model(digits_repo, "digits-slow")
    with pytest.raises(SystemExit, match="could not use CUDAExecutionProvider"):
        RawOrt(card, path, 1, "cuda")


SYSTEM_PATH = "/usr/bin:/bin"


def gpu_check(path: str) -> subprocess.CompletedProcess[str]:
    """scripts/gpu-check.sh with only ``path`` to find programs on."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh")],
        env={**os.environ, "PATH": path, "GPU_VENV": "/nonexistent/never-created"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(
    shutil.which("nvidia-smi", path=SYSTEM_PATH) is not None, reason="nvidia-smi is installed"
)
def test_the_gpu_check_stops_at_once_without_a_gpu() -> None:
    done = gpu_check(SYSTEM_PATH)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nvidia-smi not found" in done.stderr and "NVIDIA GPU" in done.stderr


@pytest.mark.parametrize(
    ("smi", "reason"),
    [
        ('echo "No devices were found"; exit 6', "nvidia-smi failed"),
        (
            'case "$1" in --query-gpu*) echo "Tesla T4, 15360 MiB, 470.82";; '
            '*) echo "Driver Version: 470.82   CUDA Version: 11.4";; esac',
            "needs CUDA 12 or newer drivers",
        ),
    ],
)
def test_the_gpu_check_says_why_a_gpu_cannot_serve(tmp_path: Path, smi: str, reason: str) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\n{smi}\n")
    fake.chmod(0o755)
    done = gpu_check(f"{tmp_path}:{SYSTEM_PATH}")
    assert done.returncode == 2 and reason in done.stderr, done.stdout + done.stderr
    assert not Path("/nonexistent/never-created").exists()
