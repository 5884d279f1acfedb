"""Start the service as a real uvicorn subprocess on 127.0.0.1 and stop it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtest.procstats import tree_rss_bytes


class ServiceStartError(RuntimeError):
    """The service subprocess exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningService:
    """A service subprocess and the URL it answers on."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server and its worker processes, 0 when it is gone."""
        return tree_rss_bytes(self.pid)

    def last_log_line(self) -> str:
        """The last non-empty line the server wrote (its own ``error: ...``, or a traceback's)."""
        lines = [line for line in self.log_tail().splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines the server wrote."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_ready(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Poll GET /readyz until it answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServiceStartError(f"service exited with code {process.returncode}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise ServiceStartError(f"service at {url} not ready after {timeout_s:.0f} s")


@contextmanager
def start_service(
    model_repository: Path,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[RunningService]:
    """Run ``python -m service`` on 127.0.0.1 with extra ``ROCKETSERVE_*`` settings in ``env``."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--model-repository",
        str(model_repository),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    running = RunningService(process, url, log_path)
    try:
        try:
            wait_ready(url, process, ready_timeout_s)
        except ServiceStartError as exc:
            # One line: what the server said last, and where the whole log is.
            said = running.last_log_line() or "nothing"
            raise ServiceStartError(f"{exc}; it said: {said} (log: {log_path})") from None
        yield running
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM (graceful shutdown), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
