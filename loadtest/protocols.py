"""``python -m loadtest.protocols``: one model over REST and over gRPC, in one run.

It starts one ``python -m service`` with its gRPC endpoint on 127.0.0.1 and, at each
concurrency, drives the model with closed-loop workers (each its own kept-open connection,
sending back to back) in five ways, interleaved round after round:

- ``rest predict image``: ``POST /predict``, one encoded image (multipart), JSON answer;
- ``rest v2 image``: the v2 infer, the image as ``BYTES`` in the binary extension, binary logits;
- ``rest v2 tensor``: the v2 infer, the preprocessed ``FP32`` tensor, binary in and out;
- ``grpc image`` and ``grpc tensor``: ``ModelInfer`` with the same inputs as raw contents.

Every request is pre-encoded and every answer checked (its status, and the logits' size). The
clients are as lean as each protocol allows (a raw HTTP/1.1 client; grpc.aio with the message's
bytes), and share the machine's cores with the server: the figures are the whole machine's
requests per second and latency, per way of asking. Prints the machine, every point's median and
range over the rounds, and gRPC's throughput over REST's for the same input.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image

from loadtest.cli import positive_float, positive_int, run_cli
from loadtest.clients import encode_request
from loadtest.leanhttp import LeanConnection, LeanHTTPError, build_request
from loadtest.payloads import ModelInfo, SampleImage, check_prediction, images_for, parse_model
from loadtest.server import free_port, start_service
from loadtest.sweep import percentile_ms
from service.contract.machine import cpu_model_name
from service.contract.model_card import read_manifest
from service.contract.preprocess import preprocess_image
from service.grpc import messages as pb

WAYS = ("rest predict image", "rest v2 image", "rest v2 tensor", "grpc image", "grpc tensor")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class AnswerError(Exception):
    """An answer that is not the expected one (status, size)."""


# One request of worker ``k``, number ``i``: sends it, checks the answer (AnswerError if wrong).
Send = Callable[[int], Awaitable[None]]


@dataclass
class Inputs:
    """The model's pre-encoded inputs: its sample images and their preprocessed tensors."""

    name: str
    images: list[SampleImage]
    tensors: list[np.ndarray]  # [1, C, H, W] float32 each
    classes: int


def _v2_body(inp: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A v2 infer body with one binary input and the logits asked for as binary."""
    header = json.dumps(
        {
            "inputs": [{**inp, "parameters": {"binary_data_size": len(blob)}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


class Way:
    """One way of asking, its requests pre-encoded; ``connect`` gives one worker's sender."""

    def __init__(
        self, name: str, url: str, grpc_target: str, inputs: Inputs, model: ModelInfo
    ) -> None:
        self.name, self._url, self._target, self._inputs = name, url, grpc_target, inputs
        self._model = model
        pairs = zip(inputs.images, inputs.tensors, strict=True)
        self._raw = [self._encode(img, x) for img, x in pairs]

    def _encode(self, img: SampleImage, x: np.ndarray) -> bytes:
        """The bytes of one request of this way: an image, or its tensor."""
        element = len(img.data).to_bytes(4, "little") + img.data  # v2 BYTES: length, bytes
        inp: dict[str, Any] = (
            {"name": "input", "datatype": "BYTES", "shape": [1]}
            if self.name.endswith("image")
            else {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
        )
        blob = element if self.name.endswith("image") else x.tobytes()
        if self.name == "rest predict image":
            return build_request(
                self._url, "/predict", *encode_request(self._model, [img], "multipart")
            )
        if self.name.startswith("rest v2"):
            body, extra = _v2_body(inp, blob)
            path = f"/v2/models/{self._inputs.name}/infer"
            return build_request(self._url, path, body, "application/octet-stream", extra)
        request = pb.ModelInferRequest(model_name=self._inputs.name)
        request.inputs.add(**inp)
        request.raw_input_contents.append(blob)
        return bytes(request.SerializeToString())

    async def connect(self) -> tuple[Send, Callable[[], Awaitable[None]]]:
        """A sender on a connection of its own, and what closes it."""
        logits_bytes = 4 * self._inputs.classes
        if self.name.startswith("grpc"):
            channel = grpc.aio.insecure_channel(self._target)
            call = channel.unary_unary(MODEL_INFER)

            async def send_grpc(i: int) -> None:
                try:
                    raw = await call(self._raw[i % len(self._raw)])
                except grpc.aio.AioRpcError as exc:
                    raise AnswerError(f"{exc.code().name}: {exc.details()}") from None
                answer = pb.ModelInferResponse.FromString(raw)
                if len(answer.raw_output_contents[0]) != logits_bytes:
                    raise AnswerError("the logits are not one row of the model's classes")

            return send_grpc, channel.close
        conn = LeanConnection(self._url, 30.0)
        predict = self.name == "rest predict image"

        async def send_rest(i: int) -> None:
            try:
                resp = await conn.request(self._raw[i % len(self._raw)])
            except LeanHTTPError as exc:
                raise AnswerError(str(exc)) from None
            if resp.status_code != 200:
                raise AnswerError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if predict:
                reason = check_prediction(resp.json(), self._model, 1)
                if reason is not None:
                    raise AnswerError(reason)
            else:
                header = int(resp.headers.get("inference-header-content-length", -1))
                if len(resp.content) - header != logits_bytes:
                    raise AnswerError("the answer has no binary logits of one row")

        return send_rest, conn.close


@dataclass
class Point:
    """One way at one concurrency in one round."""

    ok: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None


async def run_point(way: Way, concurrency: int, seconds: float, warmup_s: float) -> Point:
    """``concurrency`` workers of ``way`` back to back; what completed in the window counts."""
    point = Point()
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup_s, begin + warmup_s + seconds

    async def worker(k: int) -> None:
        send, close = await way.connect()
        try:
            for i in itertools.count(k * 7):
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                error = None
                try:
                    await send(i)
                except AnswerError as exc:
                    error = str(exc)
                t1 = time.perf_counter()
                if not measure_from <= t1 <= stop_at:
                    continue
                if error is None:
                    point.ok += 1
                    point.latencies_s.append(t1 - t0)
                else:
                    point.errors += 1
                    point.first_error = point.first_error or error
        finally:
            await close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return point


def load_inputs(repo: Path, name: str, model: ModelInfo) -> Inputs:
    """The model's sample images and their tensors, preprocessed as its card says."""
    card = read_manifest(repo / name)
    images = images_for(model)[:16]
    tensors = [
        preprocess_image(Image.open(io.BytesIO(img.data)), card.input)[None].astype(np.float32)
        for img in images
    ]
    return Inputs(name, images, tensors, len(card.labels))


def main(argv: list[str] | None = None) -> int:
    """Run every way at every concurrency, interleaved, and print the table."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.protocols", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--model", required=True, help="the model to ask")
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=positive_float, default=5.0, help="per point")
    parser.add_argument("--warmup", type=positive_float, default=1.0, help="per point")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), metavar="WAY")
    args = parser.parse_args(argv)
    repo: Path = args.model_repository
    if not (repo / args.model / "manifest.json").is_file():
        parser.error(f"--model {args.model}: no such model in {repo}")
    grpc_port = free_port()
    env = {"ROCKETSERVE_GRPC_PORT": str(grpc_port), "ROCKETSERVE_LOG_LEVEL": "warning"}
    results: dict[tuple[str, int], list[Point]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="protocols-") as scratch,
        start_service(repo, Path(scratch) / "service.log", env) as service,
    ):
        model = parse_model(httpx.get(f"{service.url}/models/{args.model}").json())
        inputs = load_inputs(repo, args.model, model)
        ways = [Way(w, service.url, f"127.0.0.1:{grpc_port}", inputs, model) for w in args.ways]
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for way in ways:
                    point = asyncio.run(run_point(way, concurrency, args.seconds, args.warmup))
                    results.setdefault((way.name, concurrency), []).append(point)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {cpu_model_name()}, {os.cpu_count()} logical CPUs; load average {load}")
    print(
        f"model {args.model}; {args.rounds} rounds of {args.seconds:g} s per point, interleaved; "
        "client and server on the same cores"
    )
    print(f"{'way':<20}{'c':>4}{'req/s (median)':>16}{'range':>16}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}")  # fmt: skip
    medians: dict[tuple[str, int], float] = {}
    for (name, concurrency), points in results.items():
        rates = sorted(p.ok / args.seconds for p in points)
        medians[name, concurrency] = statistics.median(rates)
        latencies = [x for p in points for x in p.latencies_s]
        errors = sum(p.errors for p in points)
        print(
            f"{name:<20}{concurrency:>4}{medians[name, concurrency]:>16.0f}"
            f"{f'{rates[0]:.0f}-{rates[-1]:.0f}':>16}{percentile_ms(latencies, 50):>9.2f}"
            f"{percentile_ms(latencies, 99):>9.2f}{errors:>8}"
        )
        first = next((p.first_error for p in points if p.first_error), None)
        if first:
            print(f"  first error: {first}")
    for what in ("image", "tensor"):
        rest = "rest v2 image" if what == "image" else "rest v2 tensor"
        for concurrency in args.concurrency:
            a, b = medians.get((f"grpc {what}", concurrency)), medians.get((rest, concurrency))
            if a and b:
                print(f"grpc / {rest}, {what}, c={concurrency}: {a / b:.2f}x requests per second")
    failed = sum(p.errors for points in results.values() for p in points)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
