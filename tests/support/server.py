"""Start ``python -m service`` as a real uvicorn process on a free loopback port, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.cli import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_service(
    repo: Path | str, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The service on ``repo`` until /readyz answers 200; yields its base URL and process, and
    stops it with SIGTERM (killed after 10 s) on exit.

    One worker process unless ``env`` says otherwise: the tests that use this prove what one
    process does (its /models, its metrics, its routing window); ``workers=auto`` choosing
    several is tested on its own (tests/service/test_processes.py).
    """
    port = free_port()
    argv = [sys.executable, "-m", "service", "--model-repository", str(repo), "--port", str(port)]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "ROCKETSERVE_WORKERS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
