"""A real ``python -m service`` uvicorn process on 127.0.0.1: concurrency, limits, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from loadtest.procstats import process_tree
from service.contract.preprocess import preprocess_image
from tests.service.conftest import Reference
from tests.service.test_endpoints import samples
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m service`` on a free loopback port; yields its base URL and process."""
    env = {
        "ROCKETSERVE_MAX_QUEUE_DELAY_MS": "5",
        "ROCKETSERVE_MAX_BODY_BYTES": "65536",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(digits_repo, env) as started:
        yield started


@pytest.fixture
async def http(server: tuple[str, subprocess.Popen[bytes]]) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=server[0], limits=limits, timeout=60) as c:
        yield c


def png(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


async def test_200_concurrent_requests_each_get_their_own_answer(
    http: httpx.AsyncClient, digit_images, reference, digits_repo: Path
) -> None:
    x, _ = digit_images
    ref: Reference = reference("digits-slow", 1)
    inputs = x[:200]
    assert len({arr.tobytes() for arr in inputs}) == 200  # distinct inputs
    bodies = [png(arr) for arr in inputs]

    async def one(body: bytes) -> httpx.Response:
        return await http.post(
            "/predict?model=digits-slow&top_k=10",
            content=body,
            headers={"content-type": "image/png"},
        )

    responses = await asyncio.gather(*(one(b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    for arr, r in zip(inputs, responses, strict=True):
        alone = ref.probs(preprocess_image(Image.fromarray(arr), ref.card.input)[None])[0]
        served = {p["index"]: p["score"] for p in r.json()["predictions"][0]}
        np.testing.assert_allclose([served[i] for i in range(10)], alone, rtol=1e-5, atol=1e-7)
    batch_sizes = [r.json()["batch_size"] for r in responses]
    assert max(batch_sizes) > 1

    m = samples((await http.get("/metrics")).text)
    labels = (("model", "digits-slow"), ("version", "1"))
    n_batches = m[("rocketserve_batch_size_count", labels)]
    assert m[("rocketserve_batch_size_sum", labels)] == 200
    assert n_batches < 200  # some batches held more than one input
    assert m[("rocketserve_batch_size_bucket", (("le", "1.0"), *labels))] < n_batches


def peak_rss_bytes(pid: int) -> int:
    """Peak resident memory of a process (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_body_limit_is_enforced_while_streaming(
    http: httpx.AsyncClient, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    before = peak_rss_bytes(server[1].pid)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(4_000):  # 65 MB if it were all read
            sent += 16384
            yield b"\x00" * 16384

    r = await http.post("/predict", content=endless(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    # 65 MB went over the wire, yet the server's peak memory barely moved: it never buffered
    # more than the limit, it refused the body while it streamed in.
    assert sent == 65_536_000
    assert peak_rss_bytes(server[1].pid) - before < 30_000_000


async def test_bad_input_does_not_hurt_the_process(
    http: httpx.AsyncClient, server: tuple[str, subprocess.Popen[bytes]], digit_images
) -> None:
    for body, ctype in [(b"", "image/png"), (b"garbage", "image/jpeg"), (b"x", "text/plain")]:
        r = await http.post("/predict", content=body, headers={"content-type": ctype})
        assert 400 <= r.status_code < 500 and "error" in r.json()
    r = await http.post(
        "/predict", content=png(digit_images[0][0]), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200
    assert server[1].poll() is None


async def test_bytes_that_are_no_http_get_the_json_error_and_the_process_serves_on(
    http: httpx.AsyncClient, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """What uvicorn's HTTP parser refuses, before the app sees it, is answered 400 with the
    service's JSON error (not uvicorn's plain text), and the connection closed."""
    port = int(server[0].rsplit(":", 1)[1])
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (raw[:40], answer[:200])
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_http" and "not valid HTTP" in error["message"]
    assert (await http.get("/healthz")).status_code == 200


async def test_a_request_head_is_bounded(
    http: httpx.AsyncClient, server: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """httptools would keep a header of any size in memory: past 64 KiB of request line and
    headers, the answer is a 431 JSON error and the connection closes, however the bytes come
    (one header, many, or a URL); a request with a large body and a small head is served."""
    port = int(server[0].rsplit(":", 1)[1])
    before = peak_rss_bytes(server[1].pid)
    heads = (
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 50_000_000,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"x-many: 1234567890\r\n" * 4_000,
        b"GET /healthz?" + b"q" * 70_000,
    )
    for head in heads:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        with contextlib.suppress(ConnectionError):  # closed while it still wrote
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 431"), answer[:200]
        assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert peak_rss_bytes(server[1].pid) - before < 20_000_000  # not the 50 MB header
    fine = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-token: " + b"t" * 16_000 + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(fine)
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    writer.close()
    # a request pipelined after a large body, in the same bytes and its head still incomplete:
    # the body's bytes are not its head's
    body = b" " * 60_000 + b"{}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v2/repository/index HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
        + b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: "
        + b"p" * 8_000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"\r\n\r\n")
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()
    big_body = await http.post(
        "/predict", content=b"\x00" * 300_000, headers={"content-type": "image/png"}
    )
    # a body's bytes are not the head's: refused for what the body is, not as a head
    assert big_body.status_code in (400, 413)
    assert big_body.json()["error"]["code"] != "headers_too_large"


async def test_client_leaving_mid_body_is_counted_and_harmless(
    http: httpx.AsyncClient, server: tuple[str, subprocess.Popen[bytes]], digit_images
) -> None:
    port = int(server[0].rsplit(":", 1)[1])
    before = samples((await http.get("/metrics")).text)
    key = ("rocketserve_requests_total", (("model", "unknown"), ("status", "499"), ("version", "")))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
        b"content-length: 50000\r\n\r\n" + b"\x00" * 10
    )
    await writer.drain()
    writer.close()  # gone before the body is complete
    body = png(digit_images[0][1])
    r = await http.post("/predict", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200
    for _ in range(100):  # the server notices the disconnect asynchronously
        after = samples((await http.get("/metrics")).text)
        if after.get(key, 0) > before.get(key, 0):
            break
        await asyncio.sleep(0.05)
    assert after.get(key, 0) == before.get(key, 0) + 1


def test_sigterm_shuts_down_cleanly(server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = server
    assert httpx.get(url + "/healthz").status_code == 200
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal, so the exit status says SIGTERM.
    assert proc.wait(20) in (0, -signal.SIGTERM)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "Traceback" not in out


def test_two_worker_processes_serve_with_the_stamping_protocol(digits_repo: Path) -> None:
    # uvicorn pickles its config for each worker: the protocol must be importable by path.
    env = {"ROCKETSERVE_WORKERS": "2", "ROCKETSERVE_LOG_LEVEL": "warning"}
    with running_service(digits_repo, env) as (url, proc):
        gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
        with httpx.Client(base_url=url, timeout=30) as c:
            answers = [
                c.post("/predict", content=png(gray), headers={"content-type": "image/png"})
                for _ in range(20)
            ]
        assert all(a.status_code == 200 for a in answers), answers[0].text
        # The arrival stamp reached the route: a request whose head is cut in two, the rest
        # 0.3 s later, is timed from its first byte (uvicorn's own protocol calls the app once
        # the head is complete: a few ms), in whichever worker accepts each fresh connection.
        for _ in range(4):
            answer = _split_post(url, png(gray), pause_s=0.3)
            assert answer["timing"]["total_ms"] >= 250, answer
        # uvicorn's supervisor and its two workers (python's multiprocessing may add a helper).
        assert len(process_tree(proc.pid)) >= 3


def _split_post(url: str, body: bytes, pause_s: float) -> dict[str, Any]:
    """POST /predict on a fresh connection, all but its first 16 bytes ``pause_s`` later."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head[:16])
        time.sleep(pause_s)
        sock.sendall(head[16:] + body)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status, _, rest = raw.partition(b"\r\n")
    assert b" 200 " in status, raw[:300]
    return dict(json.loads(rest.partition(b"\r\n\r\n")[2]))
