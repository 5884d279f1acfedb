"""Fuzz a real ``python -m service`` with generated client mistakes: no client input may be a 5xx.

    python -m loadtest.fuzz --requests 10000 --repository models --seed 0

starts the service on the repository (or targets ``--url``), then sends requests drawn by
Hypothesis (``loadtest.fuzz_cases``) from seven sources, one at a time on a kept-alive
connection, so that the service is never overloaded:

- ``schema``: schemathesis cases of the OpenAPI document served at /openapi.json, valid and not;
- ``json``: JSON bodies of every type and depth, numbers of thousands of digits, odd encodings;
- ``tensor``: tensors of every shape and value type, near and at the models' shapes;
- ``image``: images of every mode, size, bit depth and format, truncated, corrupted or with patched
  header sizes, sent raw, in a form or as base64 JSON;
- ``form``: multipart bodies with odd boundaries, part headers and line endings;
- ``http``: odd methods, paths, query strings (unicode, bad escapes), headers, Content-Lengths;
- ``v2``: Open Inference Protocol infer bodies (datatypes, shapes, data, binary parts).

It prints the requests sent, the answers by status class and every 5xx with the request that
caused it. A 500 is always a bug; a 503 or 504 is the documented server condition only with its
code (``overloaded``, ``queue_full``, ``deadline_exceeded``, ...) and ``Retry-After``. A 4xx of
the service without its JSON error body (requests its HTTP parser refuses included), and a
request without any answer, are bugs too. Exit status 1 when a bug was found, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hypothesis import HealthCheck, Phase, Verbosity, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from loadtest.cli import http_url, non_negative_float, positive_int, run_cli
from loadtest.fuzz_cases import (
    FuzzCase,
    Served,
    form_requests,
    http_requests,
    image_requests,
    json_requests,
    schema_requests,
    tensor_requests,
    v2_requests,
)
from loadtest.server import start_service

SOURCES = ("schema", "json", "tensor", "image", "form", "http", "v2")
WEIGHTS = {
    "schema": 0.2,
    "json": 0.12,
    "tensor": 0.12,
    "image": 0.28,
    "form": 0.1,
    "http": 0.1,
    "v2": 0.08,
}
DOCUMENTED_5XX = {
    503: {"overloaded", "queue_full", "shutting_down", "not_ready"},
    504: {"deadline_exceeded"},
}


@dataclass(frozen=True)
class Answer:
    """Status, lower-cased headers and body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> tuple[bool, str | None]:
        """(is a JSON error body, its code): ``{"error": {"code", ...}}`` or ``{"error": str}``."""
        try:
            error = json.loads(self.body)["error"]
        except (ValueError, KeyError, TypeError):
            return False, None
        code = error.get("code") if isinstance(error, dict) else None
        return isinstance(error, (dict, str)), code if isinstance(code, str) else None


class RawConnection:
    """One blocking keep-alive connection that sends bytes as they are; reconnects when closed.

    httpx would refuse or normalise the odd bytes the campaign sends.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self.buffer = b""

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""

    def exchange(self, case: FuzzCase) -> Answer | None:
        """Send one request and read its answer; None when the server closed without one."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.host, self.port), self.timeout_s)
            # The server may answer (413) and close before it has read everything.
            with contextlib.suppress(OSError):
                self.sock.sendall(case.encode(f"{self.host}:{self.port}".encode()))
            answer = self._read(head_only=case.method == b"HEAD")
        except OSError:
            answer = None
        closing = answer is not None and answer.headers.get("connection", "").lower() == "close"
        if answer is None or closing or case.length is not None:
            self.close()
        return answer

    def _recv(self) -> bool:
        assert self.sock is not None
        data = self.sock.recv(1 << 16)
        self.buffer += data
        return bool(data)

    def _read_until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self._recv():
                return None
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _read_exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self._recv():
                return None
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _read(self, head_only: bool) -> Answer | None:
        head = self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return Answer(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() != "chunked":
            body = self._read_exactly(int(headers.get("content-length", "0")))
            return None if body is None else Answer(status, headers, body)
        chunks: list[bytes] = []
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0], 16) if size_line is not None else -1
            chunk = self._read_exactly(size + 2) if size >= 0 else None
            if chunk is None:
                return None
            if size == 0:
                return Answer(status, headers, b"".join(chunks))
            chunks.append(chunk[:-2])


@dataclass
class Finding:
    """A bug (a 5xx, a 4xx without a JSON error, no answer) and the request that caused it."""

    status: int | None
    code: str | None
    case: FuzzCase


@dataclass
class Tally:
    """Requests sent and answers received, per source and status."""

    sent: Counter[str] = field(default_factory=Counter)
    by_class: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    documented_5xx: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(self.sent.values())

    @property
    def five_xx(self) -> int:
        """5xx answers of any kind."""
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def record(self, case: FuzzCase, answer: Answer | None) -> None:
        """Count one exchange; keep it as a finding if it is a bug."""
        self.sent[case.source] += 1
        if answer is None:
            self.by_class[(case.source, "none")] += 1
            self.findings.append(Finding(None, None, case))
            return
        self.statuses[answer.status] += 1
        self.by_class[(case.source, f"{answer.status // 100}xx")] += 1
        is_error, code = answer.error()
        if 400 <= answer.status < 500 and not is_error and case.method != b"HEAD":
            # every answer to a client's mistake is a JSON error, the HTTP parser's too
            self.findings.append(Finding(answer.status, "no JSON error body", case))
        if answer.status >= 500:
            documented = code in DOCUMENTED_5XX.get(answer.status, set())
            if documented and "retry-after" in answer.headers:
                self.documented_5xx[f"{answer.status} {code}"] += 1
            else:
                self.findings.append(Finding(answer.status, code, case))


def run_source(
    name: str,
    strategy: st.SearchStrategy[FuzzCase],
    count: int,
    seed_value: int,
    send: Callable[[FuzzCase], None],
) -> int:
    """Send ``count`` requests drawn from ``strategy``, seeded; returns the number sent."""
    sent = 0
    for attempt in range(20):  # a small search space may run dry: go on with the next seed
        if sent >= count:
            break

        @hypothesis_settings(
            max_examples=count - sent,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
        )
        @given(strategy)
        def campaign(case: FuzzCase) -> None:
            nonlocal sent
            if sent < count:
                send(case)
                sent += 1

        seed(seed_value * 1000 + 20 * SOURCES.index(name) + attempt)(campaign)()
    return sent


def run_campaign(
    url: str,
    requests: int,
    seed_value: int = 0,
    sources: tuple[str, ...] = SOURCES,
    pause_s: float = 0.0,
    timeout_s: float = 60.0,
) -> Tally:
    """Send ``requests`` fuzzed requests to the service at ``url``, one at a time; tally them."""
    served = Served.read(url)
    factories: dict[str, Callable[[], st.SearchStrategy[FuzzCase]]] = {
        "schema": lambda: schema_requests(url),
        "json": lambda: json_requests(served),
        "tensor": lambda: tensor_requests(served),
        "image": lambda: image_requests(served),
        "form": lambda: form_requests(served),
        "http": lambda: http_requests(served),
        "v2": lambda: v2_requests(served),
    }
    weight = sum(WEIGHTS[s] for s in sources)
    shares = {s: int(requests * WEIGHTS[s] / weight) for s in sources}
    shares[sources[0]] += requests - sum(shares.values())
    tally = Tally()
    connection = RawConnection(url, timeout_s)

    def send(case: FuzzCase) -> None:
        tally.record(case, connection.exchange(case))
        if pause_s:
            time.sleep(pause_s)

    try:
        for source in sources:
            run_source(source, factories[source](), shares[source], seed_value, send)
    finally:
        connection.close()
    return tally


def summary(tally: Tally, url: str, seed_value: int, seconds: float) -> str:
    """The printed report: requests, answers by status class per source, every 5xx found."""
    classes = ("2xx", "3xx", "4xx", "5xx", "none")

    def row(name: str, sent: int, counts: list[int]) -> str:
        return f"{name:<8}{sent:>9}" + "".join(f"{n:>7}" for n in counts[:-1]) + f"{counts[-1]:>11}"

    lines = [
        f"fuzz campaign: {tally.total} requests to {url}, seed {seed_value}, {seconds:.0f} s",
        f"{'source':<8}{'requests':>9}" + "".join(f"{c:>7}" for c in classes[:-1]) + "  no answer",
    ]
    for source in SOURCES:
        if tally.sent[source]:
            counts = [tally.by_class[(source, c)] for c in classes]
            lines.append(row(source, tally.sent[source], counts))
    totals = [sum(tally.by_class[(s, c)] for s in SOURCES) for c in classes]
    lines.append(row("total", tally.total, totals))
    lines.append("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(tally.statuses.items())))
    documented = ", ".join(f"{k}: {n}" for k, n in sorted(tally.documented_5xx.items()))
    lines.append(f"5xx: {tally.five_xx} (documented 503/504 with Retry-After: {documented or 0})")
    lines.append(
        f"bugs (500, other 5xx, 4xx without a JSON error, no answer): {len(tally.findings)}"
    )
    for finding in tally.findings:
        what = "no answer" if finding.status is None else f"{finding.status} {finding.code}"
        lines.append(f"  {what} <- {finding.case.describe()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=positive_int, default=10_000, help="requests to send in all"
    )
    parser.add_argument(
        "--repository", type=Path, default=Path("models"), help="model repository to serve"
    )
    parser.add_argument("--url", type=http_url, help="fuzz a service already running there instead")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same requests")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"a subset of {SOURCES}")
    parser.add_argument(
        "--pause-ms", type=non_negative_float, default=0.0, help="pause between requests"
    )
    parser.add_argument("--save", type=Path, help="folder to write each bug's request to")
    args = parser.parse_args(argv)
    sources = tuple(s for s in args.sources.split(",") if s)
    if not sources or set(sources) - set(SOURCES):
        parser.error(f"--sources: choose among {SOURCES}")
    if not args.url and not args.repository.is_dir():
        parser.error(f"--repository {args.repository}: not a folder")
    started = time.monotonic()
    pause_s = args.pause_ms / 1000.0
    if args.url:
        url = args.url
        tally = run_campaign(url, args.requests, args.seed, sources, pause_s)
    else:
        log = Path(tempfile.mkdtemp(prefix="rocketserve-fuzz-")) / "service.log"
        with start_service(args.repository, log, {"ROCKETSERVE_LOG_LEVEL": "warning"}) as service:
            url = service.url
            tally = run_campaign(url, args.requests, args.seed, sources, pause_s)
            if service.process.poll() is not None:
                print(f"the service died during the campaign; its log: {log}", file=sys.stderr)
    print(summary(tally, url, args.seed, time.monotonic() - started))
    if args.save and tally.findings:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, finding in enumerate(tally.findings):
            path = args.save / f"{i:04d}-{finding.case.source}.http"
            path.write_bytes(finding.case.encode(b"127.0.0.1"))
        print(f"the requests of the bugs are in {args.save}/ (send one: nc HOST PORT < FILE)")
    return 1 if tally.findings else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
