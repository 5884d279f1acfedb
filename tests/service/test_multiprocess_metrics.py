"""Several worker processes, one scrape: /metrics is the service's, not one random worker's.

prometheus-client's multiprocess mode (``service/observability/multiprocess.py``): every worker
writes its values to files named by its process id; a scrape merges them. The tests read those
per-process files to see which worker served what.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from service.contract.model_card import read_manifest
from service.observability.metrics import FLUSH_S, ServiceMetrics
from service.observability.multiprocess import (
    ENV,
    TEMP_PREFIX,
    WorkersCollector,
    forget_dead_workers,
    share_metrics_across_workers,
)
from tests.service.test_endpoints import samples
from tests.support.cli import ROOT
from tests.support.server import running_service

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TENSOR = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8).tolist()


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def merged(files: list[Path]) -> Samples:
    """The samples a scrape would show if only ``files`` existed."""
    out: Samples = {}
    for family in MultiProcessCollector.merge([str(f) for f in files], accumulate=True):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def labels(model: str, version: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": model, "version": version, **extra}.items()))


# --- one process: nothing changes -------------------------------------------------------------


def test_one_worker_keeps_its_metrics_in_memory(clean_env: None) -> None:
    os.environ.pop(ENV, None)
    assert share_metrics_across_workers(1) is None
    assert ENV not in os.environ
    metrics = ServiceMetrics()  # in this process prometheus-client was imported without ENV
    assert not metrics.multiprocess
    metrics.requests.labels("m", "1", "200").inc()
    assert b'rocketserve_requests_total{model="m",status="200",version="1"} 1.0' in (
        metrics.exposition()
    )


def test_several_workers_get_a_fresh_folder_and_stale_ones_go(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    os.environ.pop(ENV, None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    abandoned = tmp_path / f"{TEMP_PREFIX}{dead_pid()}-abc"
    abandoned.mkdir()
    (abandoned / "counter_1.db").write_bytes(b"")
    other_run = tmp_path / f"{TEMP_PREFIX}{os.getppid()}-def"  # its process still runs
    other_run.mkdir()
    path = share_metrics_across_workers(2)
    assert path is not None and path.parent == tmp_path and not any(path.iterdir())
    assert path.name.startswith(f"{TEMP_PREFIX}{os.getpid()}-")
    assert os.environ[ENV] == str(path)  # what the spawned workers inherit
    assert not abandoned.exists() and other_run.exists()


def test_an_operators_folder_is_used_and_wiped_of_old_values(
    clean_env: None, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"old")
    (folder / "README").write_text("not ours")
    os.environ[ENV] = str(folder)
    assert share_metrics_across_workers(1) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["README"]


def test_dead_workers_lose_their_live_gauges_but_keep_their_counts(tmp_path: Path) -> None:
    gone, here = dead_pid(), os.getpid()
    for name in (
        f"gauge_livesum_{gone}.db",
        f"gauge_livemin_{gone}.db",
        f"counter_{gone}.db",
        f"histogram_{gone}.db",
        f"gauge_livesum_{here}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"histogram_{gone}.db", f"gauge_livesum_{here}.db"]
    )


# --- two writer processes, merged in a third ----------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from service.observability.metrics import FLUSH_S, ServiceMetrics
    n, ready = int(sys.argv[1]), sys.argv[2]
    m = ServiceMetrics()
    assert m.multiprocess
    for _ in range(n):
        m.requests.labels("m", "1", "200").inc()
        m.request_latency.labels("m", "1").observe(0.003)
    m.queue_depth.labels("m", "1").set(n)
    m.queue_capacity.labels("m", "1").set(512)
    m.in_flight.labels("m", "1").set(1)
    m.model_ready.labels("m", "1").set(ready == "ready")
    m.model_params.labels("m", "1").set(1000)
    m.model_info.labels("m", "1", "kd", "wrn", "fp32", "CPUExecutionProvider").set(1)
    print("written", flush=True)
    sys.stdin.read()  # live until the test closes stdin or kills it
    """
)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[str]]]]:
    """Two processes writing ServiceMetrics to one folder: 3 requests (ready) and 5 (not)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, ENV: str(folder)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(n), ready],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, ready in ((3, "ready"), (5, "loading"))
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "written"
        yield folder, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def scrape(folder: Path) -> Samples:
    out: Samples = {}
    for family in WorkersCollector(folder).collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_and_histograms_sum_and_gauges_follow_their_mode(
    writers: tuple[Path, list[subprocess.Popen[str]]],
) -> None:
    folder, procs = writers
    m, key = scrape(folder), labels("m", "1")
    assert m[("rocketserve_requests_total", labels("m", "1", status="200"))] == 8
    assert m[("rocketserve_request_latency_seconds_count", key)] == 8
    assert m[("rocketserve_request_latency_seconds_bucket", labels("m", "1", le="0.005"))] == 8
    assert m[("rocketserve_queue_depth", key)] == 3 + 5  # livesum
    assert m[("rocketserve_queue_capacity", key)] == 2 * 512  # livesum: two queues
    assert m[("rocketserve_in_flight_requests", key)] == 2  # livesum
    assert m[("rocketserve_model_ready", key)] == 0  # livemin: one worker is not ready
    assert m[("rocketserve_model_parameters", key)] == 1000  # livemax: not 2000
    info = labels(
        "m", "1", method="kd", architecture="wrn", precision="fp32", provider="CPUExecutionProvider"
    )
    assert m[("rocketserve_model_info", info)] == 1  # livemax: not 2

    # The worker that was not ready dies: its gauges go, what it served stays counted.
    procs[1].kill()
    procs[1].wait()
    m = scrape(folder)
    assert m[("rocketserve_requests_total", labels("m", "1", status="200"))] == 8
    assert m[("rocketserve_request_latency_seconds_count", key)] == 8
    assert m[("rocketserve_queue_depth", key)] == 3
    assert m[("rocketserve_queue_capacity", key)] == 512
    assert m[("rocketserve_model_ready", key)] == 1
    assert not list(folder.glob(f"gauge_*_{procs[1].pid}.db"))


# --- two real uvicorn workers ----------------------------------------------------------------


def per_worker_requests(folder: Path) -> dict[int, float]:
    """Prediction requests each worker process counted, from its own counter file."""
    counts = {}
    for file in folder.glob("counter_*.db"):
        m = merged([file])
        counts[int(file.stem.split("_")[1])] = sum(
            v for (name, _), v in m.items() if name == "rocketserve_requests_total"
        )
    return counts


async def predict_many(url: str, n: int) -> None:
    """``n`` requests from 32 connections at once, so that both workers accept some."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
        replies = await asyncio.gather(
            *(c.post("/predict?model=digits-logreg", json={"tensor": TENSOR}) for _ in range(n))
        )
    assert all(r.status_code == 200 for r in replies), replies[0].text


def scraped(url: str) -> Samples:
    """One scrape of /metrics, whichever worker answers it."""
    return samples(httpx.get(url + "/metrics").text)


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_two_workers_are_scraped_as_one_service(digits_repo: Path) -> None:
    env = {
        "ROCKETSERVE_WORKERS": "2",
        "ROCKETSERVE_LOG_LEVEL": "warning",
        "ROCKETSERVE_MAX_QUEUE_SIZE": "300",
    }
    ready = labels("digits-logreg", "2")
    with running_service(digits_repo, env) as (url, proc):
        [folder] = Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{proc.pid}-*")
        sent = 0
        # Both workers must serve some; the kernel decides who accepts each connection.
        while sent < 2_000 and sum(1 for v in per_worker_requests(folder).values() if v) < 2:
            asyncio.run(predict_many(url, 100))
            sent += 100
        per_worker = per_worker_requests(folder)
        assert sum(1 for v in per_worker.values() if v) == 2, per_worker
        assert sum(per_worker.values()) == sent

        m = scraped(url)
        total = m[("rocketserve_requests_total", labels("digits-logreg", "2", status="200"))]
        assert total == sent > max(per_worker.values())  # more than any one worker served
        assert m[("rocketserve_request_latency_seconds_count", ready)] == sent
        assert m[("rocketserve_batch_size_sum", ready)] == sent  # one input per request
        everything = labels("digits-logreg", "2", le="+Inf")
        assert m[("rocketserve_request_latency_seconds_bucket", everything)] == sent
        served = [key for name, key in m if name == "rocketserve_model_ready"]
        assert ready in served
        for key in served:
            params = read_manifest(digits_repo / dict(key)["model"]).params
            assert m[("rocketserve_queue_capacity", key)] == 2 * 300  # livesum: two queues
            assert m[("rocketserve_model_ready", key)] == 1  # livemin: ready in both
            assert m[("rocketserve_in_flight_requests", key)] == 0  # livesum
            assert m[("rocketserve_model_parameters", key)] == params  # livemax: not doubled
        # Every worker answers a scrape, and Triton's statistics, with the service-wide figures
        # (each worker's statistics sums are written at most FLUSH_S after its last request).
        time.sleep(2 * FLUSH_S)
        for _ in range(6):
            again = scraped(url)
            assert again[("rocketserve_batch_size_sum", ready)] == sent
            stats = httpx.get(url + "/v2/models/digits-logreg/versions/2/stats").json()
            [entry] = stats["model_stats"]
            assert entry["inference_stats"]["success"]["count"] == sent
            assert entry["inference_stats"]["compute_infer"]["count"] == sent
            assert entry["inference_count"] == sent and entry["last_inference"] > 0
            # Triton's metric names carry the same service-wide figures.
            assert again[("nv_inference_request_success_total", ready)] == sent  # (parser's name)
            assert again[("nv_inference_count_total", ready)] == sent

        # A worker dies; uvicorn's supervisor starts another, which loads the models.
        victim = next(pid for pid, v in per_worker.items() if v)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            return (
                len(list(folder.glob("gauge_livemin_*.db"))) == 2
                and not list(folder.glob(f"gauge_live*_{victim}.db"))
                and scraped(url).get(("rocketserve_queue_capacity", ready)) == 2 * 300
            )

        wait_for(replaced, "a replacement worker with its models loaded")
        m = scraped(url)
        # What the dead worker served is still counted; its gauges are not.
        assert m[("rocketserve_requests_total", labels("digits-logreg", "2", status="200"))] == sent
        assert m[("rocketserve_model_ready", ready)] == 1
        assert m[("rocketserve_queue_capacity", ready)] == 2 * 300

    proc.wait(20)
    assert not folder.exists()  # the service run's folder is removed when it exits
