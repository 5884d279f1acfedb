"""``python -m loadtest.served_vs_raw``: one model served against raw ONNX Runtime, in one run.

For concurrency 1, 8 and 64 it drives a real ``python -m service`` process on 127.0.0.1 (batching
on, then off) with keep-alive HTTP/1.1 clients sending one PNG per request, and measures raw
in-process ONNX Runtime at batch sizes 1, 8, 32 and 64. On CPU the raw side is the machine's best:
every thread layout of ``loadtest.raw`` (one session on 1 or every core, one-thread sessions or
callers side by side), and the verdicts compare the service with the best of them. With
``--provider cuda`` (a GPU machine with onnxruntime-gpu) both sides run on CUDA, raw with
``--threads`` (1 for auto). Every figure is printed with the machine it was measured on. Client
and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from pydantic import ValidationError

from loadtest.cli import non_negative_float, positive_float, positive_int, run_cli
from loadtest.raw import SEARCH_BATCH_SIZES, RawCeiling, RawCell, search_layouts
from loadtest.served_report import Row, order, raw_rows, report, targets_for
from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    model_dirs,
    model_file,
    read_manifest,
    version_dirs,
)
from service.inference.processes import choose_processes
from service.settings import Settings

_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def pick_model(repo: Path, name: str | None) -> tuple[ModelCard, Path]:
    """The named model, or the one with the most MACs; returns its card and served file."""
    cards = [read_manifest(d) for d in model_dirs(repo)]
    if not cards:
        raise SystemExit(f"error: {repo}: no models")
    if name:
        matches = [c for c in cards if c.name == name]
        if not matches:
            raise SystemExit(f"error: no model {name!r} in {repo}")
        card = matches[0]
    else:
        card = max(cards, key=lambda c: (c.macs, c.name))
    version = max(version_dirs(repo / card.name))
    return card, model_file(repo / card.name, version)


def sample_png(card: ModelCard) -> bytes:
    """A PNG at the model's input size and colour, so decode cost matches real traffic."""
    c, h, w = card.input.shape
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def random_batch(card: ModelCard, batch_size: int) -> np.ndarray:
    """A batch of random inputs of the model's shape (the same every time)."""
    shape = (batch_size, *card.input.shape)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


class RawOrt:
    """In-process ONNX Runtime on the same file, thread count and provider: the ceiling."""

    def __init__(self, card: ModelCard, path: Path, threads: int, provider: str = "cpu") -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        wanted = PROVIDERS[provider]
        # CPU stays listed after CUDA, as in the service, for operators CUDA lacks.
        providers = [wanted, PROVIDERS["cpu"]] if provider == "cuda" else [wanted]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        if self.session.get_providers()[0] != wanted:  # ORT falls back to CPU with a warning
            raise SystemExit(
                f"error: ONNX Runtime could not use {wanted} (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, alone, "
                "on a machine with an NVIDIA GPU and CUDA 12 or newer drivers"
            )
        self.card = card

    def measure(self, batch_size: int, seconds: float) -> Row:
        """Back-to-back runs of one random batch for ``seconds``."""
        feed = {self.card.input.name: random_batch(self.card, batch_size)}
        for _ in range(5):
            self.session.run(None, feed)
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - t0)
        lat = np.asarray(times)
        p50, p99 = np.percentile(lat, [50, 99]) * 1000
        return Row("raw ORT", batch_size, batch_size * len(lat) / lat.sum(), p50, p99, batch_size)


async def _client(
    port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            latencies.append(time.perf_counter() - t0)
            if head[9:12] != b"200":
                errors.append(1)
    finally:
        writer.close()


async def _drive(port: int, request: bytes, concurrency: int, seconds: float) -> Row:
    latencies: list[float] = []
    errors: list[int] = []
    warm = time.perf_counter() + min(1.0, seconds / 3)
    await asyncio.gather(*(_client(port, request, warm, [], []) for _ in range(concurrency)))
    t0 = time.perf_counter()
    stop = t0 + seconds
    await asyncio.gather(
        *(_client(port, request, stop, latencies, errors) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - t0
    lat = np.asarray(latencies)
    p50, p99 = np.percentile(lat, [50, 99]) * 1000
    return Row("", concurrency, len(lat) / elapsed, p50, p99, errors=len(errors))


def _batch_totals(url: str, model: str) -> tuple[float, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("rocketserve_batch_size_") and f'model="{model}"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("rocketserve_batch_size_sum"):
                total += value
            elif line.startswith("rocketserve_batch_size_count"):
                count += value
    return total, count


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python -m service`` on a free loopback port, driven at one concurrency at a time."""

    def __init__(
        self,
        repo: Path,
        card: ModelCard,
        env: dict[str, str],
        label: str,
        *,
        launcher: list[str] | None = None,
        cwd: Path | None = None,
        payload: tuple[str, bytes] | None = None,
    ) -> None:
        """``launcher`` replaces ``python -m service`` (its options follow); ``cwd`` is where
        it runs; ``payload`` is the (content type, body) of every request (default: a PNG)."""
        self.card, self.label = card, label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = launcher or [sys.executable, "-m", "service"]
        cmd = [*cmd, "--model-repository", str(repo.resolve()), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, "ROCKETSERVE_LOG_LEVEL": "warning", **env}
        )
        content_type, body = payload or ("image/png", sample_png(card))
        self.request = (
            f"POST /predict?model={card.name}&top_k=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Poll /readyz until 200."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"error: the service exited with code {self.proc.returncode}")
            try:
                if urllib.request.urlopen(self.url + "/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("error: the service did not become ready")
            time.sleep(0.2)

    def measure(self, concurrency: int, seconds: float) -> Row:
        """Throughput and latency at ``concurrency``, with the mean batch size from /metrics."""
        before = _batch_totals(self.url, self.card.name)
        row = asyncio.run(_drive(self.port, self.request, concurrency, seconds))
        after = _batch_totals(self.url, self.card.name)
        batches = after[1] - before[1]
        row.label = self.label
        row.mean_batch = (after[0] - before[0]) / batches if batches else None
        return row

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def repository_of_one(repo: Path, name: str, into: Path) -> Path:
    """A repository in ``into`` serving only model ``name`` of ``repo`` (a link to its folder):
    the servers load and warm that model alone (on a GPU, one set of device buffers)."""
    (into / name).symlink_to((repo / name).resolve(), target_is_directory=True)
    return into


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.served_vs_raw", description=__doc__)
    parser.add_argument(
        "--model-repository", type=Path, default=Path("models"), help="default: models/"
    )
    parser.add_argument("--model", help="model name (default: the one with the most MACs)")
    parser.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 8, 64])
    parser.add_argument(
        "--seconds", type=positive_float, default=3.0, help="measured time per level"
    )
    parser.add_argument(
        "--raw-seconds",
        type=positive_float,
        default=1.0,
        help="raw time per (thread layout, batch size)",
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="service intra-op threads: auto (default) or a count (raw CUDA: 1 for auto)",
    )
    parser.add_argument(
        "--workers", default="auto", help="service worker processes: auto (default) or a count"
    )
    parser.add_argument("--max-queue-delay-ms", type=non_negative_float, default=2.0)
    parser.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="execution provider of both sides (cuda needs onnxruntime-gpu and a GPU)",
    )
    args = parser.parse_args(argv)
    if args.threads != "auto" and not args.threads.isdecimal():
        parser.error("--threads takes auto or a non-negative integer")
    repo = args.model_repository
    if not repo.is_dir():
        print(f"error: {repo}: not a folder", file=sys.stderr)
        return 2
    try:
        card, path = pick_model(repo, args.model)
    except ModelRepositoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    biggest = max(args.concurrency)
    common = {
        "ROCKETSERVE_INTRA_OP_THREADS": str(args.threads),
        "ROCKETSERVE_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms),
        "ROCKETSERVE_MAX_BATCH_SIZE": str(max(64, biggest)),
        "ROCKETSERVE_MAX_QUEUE_SIZE": str(max(512, 4 * biggest)),
        "ROCKETSERVE_MAX_INPUTS_PER_REQUEST": "1",
        "ROCKETSERVE_PROVIDER": args.provider,
        "ROCKETSERVE_WORKERS": args.workers,
    }
    # CPU: the machine's best over thread layouts; CUDA: one session, as the service runs it.
    threads = 1 if args.threads == "auto" else int(args.threads)
    raw = RawOrt(card, path, threads, args.provider) if args.provider == "cuda" else None
    cells: list[RawCell] = []

    def measure_raw(batch_sizes: list[int]) -> None:
        batches = {bs: random_batch(card, bs) for bs in batch_sizes}
        cells.extend(search_layouts(path, card.input.name, batches, args.raw_seconds))

    off = {**common, "ROCKETSERVE_BATCHING": "false"}
    one_model = tempfile.TemporaryDirectory(prefix="served-vs-raw-")
    served = repository_of_one(repo, card.name, Path(one_model.name))
    try:
        chosen = Settings.model_validate(
            {"model_repository": served, "workers": args.workers, "provider": args.provider}
        )
    except ValidationError:
        parser.error("--workers takes auto or an integer from 1 to 64")
    processes, why = choose_processes(chosen, [card])
    workers = f"{args.workers} ({processes}: {why})"
    servers: list[Server] = []
    rows: list[Row] = []
    load_before = os.getloadavg()
    try:
        # One after the other: each service times its model at start-up to choose its thread
        # layout, and two doing so at once would each see the other's load.
        for env, label in ((common, "batching on"), (off, "batching off")):
            servers.append(Server(served, card, env, label))
            servers[-1].wait_ready()
        # Interleaved per level so that raw and served see the same background load.
        for c in args.concurrency:
            if raw is not None:
                rows.append(raw.measure(c, args.seconds))
            else:
                measure_raw([c])
            rows += [server.measure(c, args.seconds) for server in servers]
        if raw is None:
            measure_raw(sorted(set(SEARCH_BATCH_SIZES) - set(args.concurrency)))
    finally:
        for server in servers:
            server.stop()
        one_model.cleanup()
    load = (load_before[0], os.getloadavg()[0])
    best = RawCeiling(tuple(cells)) if cells else None
    if best is not None:
        rows += raw_rows(best, args.concurrency)
    targets = targets_for(card, args.model_repository)
    table = sorted(rows, key=order)
    print(report(card, args.threads, table, load, args.provider, best, targets, workers))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
