"""A real Prometheus scrapes a real service: every dashboard and rule query parses and has data.

The service runs as ``python -m service`` (uvicorn) on the ``digits_repo`` fixture, Prometheus runs
the project's own prometheus.yml and rule files with only the scrape targets rewritten to loopback
and the intervals shortened, and real PNG digits are sent while the queries are polled.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from PIL import Image

from service.contract.model_card import read_manifest
from tests.deploy.stack import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    RULE_TESTS_DIR,
    Query,
    dashboard_files,
    dashboard_queries,
    rule_files,
    rule_queries,
    substitute_grafana_variables,
)
from tests.support.onnx_repo import digits_uint8_split
from tests.support.server import free_port

pytestmark = pytest.mark.slow

T = TypeVar("T")
MODELS = ("digits-logreg", "digits-slow")
DEADLINE_S = 40.0


def binary(name: str) -> str:
    """A Prometheus tool from the Debian package (`make system-deps` installs it)."""
    found = shutil.which(name)
    assert found, f"{name} is not installed: run scripts/install-system-deps.sh"
    return found


def wait_for(check: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
    """Poll ``check`` until it returns a value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def http_ok(url: str, proc: subprocess.Popen[bytes], log: Path) -> Callable[[], bool | None]:
    """A check that is True once ``url`` answers 200, and fails if ``proc`` has exited."""

    def check() -> bool | None:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return True if httpx.get(url, timeout=2.0).status_code == 200 else None
        except httpx.TransportError:
            return None

    return check


@pytest.fixture(scope="module")
def service_url(digits_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    env = os.environ | {"ROCKETSERVE_LOG_LEVEL": "warning", "ROCKETSERVE_MAX_QUEUE_DELAY_MS": "5"}
    command = [sys.executable, "-m", "service", "--model-repository", str(digits_repo)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ok(f"{url}/readyz", proc, log), "the service's /readyz", timeout=60)
        yield url
    finally:
        stop(proc)


def loopback_config(service_port: int, prometheus_port: int) -> dict[str, Any]:
    """The project's prometheus.yml with loopback targets, 1 s intervals and absolute rule paths."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text("utf-8"))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    targets = {"rocketserve": service_port, "prometheus": prometheus_port}
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    return config


@pytest.fixture(scope="module")
def prometheus_url(service_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(int(service_url.rsplit(":", 1)[1]), port)))
    log = folder / "prometheus.log"
    command = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(http_ok(f"{url}/-/ready", proc, log), "Prometheus /-/ready", timeout=30)
        yield url
    finally:
        stop(proc)


def digit_pngs(count: int = 24) -> list[bytes]:
    """Real PNG files of test-split digits."""
    _, x_test, _, _ = digits_uint8_split()
    images = []
    for pixels in x_test[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0], mode="L").save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


class Traffic:
    """Concurrent clients posting real PNGs (and now and then a broken one) until stopped."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.images = digit_pngs()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _client(self, index: int) -> None:
        try:
            self._send(index)
        except Exception as exc:  # surfaced by the fixture: a dead client thread must not hide
            with self._lock:
                self.errors.append(repr(exc))

    def _send(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            n = index
            while not self._stop.is_set():
                n += 1
                model = MODELS[n % len(MODELS)]
                body = b"\x89PNG broken" if n % 10 == 0 else self.images[n % len(self.images)]
                resp = client.post(
                    "/predict",
                    params={"model": model},
                    content=body,
                    headers={"content-type": "image/png"},
                )
                if resp.status_code == 200:
                    assert resp.json()["predictions"][0][0]["label"] in "0123456789"
                with self._lock:
                    self.statuses[resp.status_code] += 1


@pytest.fixture(scope="module")
def traffic(service_url: str, prometheus_url: str) -> Iterator[Traffic]:
    with Traffic(service_url) as running:
        yield running
    assert not running.errors, running.errors
    assert running.statuses[200] > 0 and set(running.statuses) <= {200, 400}, running.statuses


def query(prometheus_url: str, expr: str) -> dict[str, Any]:
    """GET /api/v1/query; returns the JSON answer, errors (e.g. parse errors) included."""
    resp = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10.0)
    answer: dict[str, Any] = resp.json()
    return answer


def finite_values(answer: dict[str, Any]) -> list[float]:
    data = answer["data"]
    if data["resultType"] == "vector":
        raw = [sample["value"][1] for sample in data["result"]]
    elif data["resultType"] == "matrix":
        raw = [value for series in data["result"] for _, value in series["values"]]
    else:
        raw = [data["result"][1]]
    return [v for v in map(float, raw) if math.isfinite(v)]


def test_promtool_checks_config_rules_and_rule_tests() -> None:
    promtool = binary("promtool")
    checks = [
        ["check", "config", str(PROMETHEUS_CONFIG)],
        ["check", "rules", *map(str, rule_files())],
        ["test", "rules", *map(str, sorted(RULE_TESTS_DIR.glob("*.yml")))],
    ]
    for args in checks:
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert len(checks[1]) > 2 and len(checks[2]) > 2, "no rule files or rule tests found"


def test_prometheus_scrapes_the_service(prometheus_url: str, traffic: Traffic) -> None:
    def scraped() -> bool | None:
        answer = query(prometheus_url, 'up{job="rocketserve"} == 1')
        return True if answer["data"]["result"] else None

    wait_for(scraped, "the rocketserve target to be up")


def test_every_dashboard_query_returns_data(prometheus_url: str, traffic: Traffic) -> None:
    queries = [q for path in dashboard_files() for q in dashboard_queries(path)]
    assert queries
    pending: dict[str, Query] = {}
    for q in queries:
        expr = substitute_grafana_variables(q.expr)
        answer = query(prometheus_url, expr)
        assert answer["status"] == "success", f"{q.where}: {answer.get('error')}\n{expr}"
        pending[expr] = q

    def all_have_data() -> bool | None:
        for expr in list(pending):
            if finite_values(query(prometheus_url, expr)):
                del pending[expr]
        return True if not pending else None

    deadline = time.monotonic() + DEADLINE_S
    while all_have_data() is None:
        if time.monotonic() > deadline:
            missing = "\n".join(f"{q.where}: {expr}" for expr, q in pending.items())
            pytest.fail(f"no data after {DEADLINE_S:.0f} s (sent {traffic.statuses}):\n{missing}")
        time.sleep(0.5)


def test_gauges_carry_the_model_cards(
    prometheus_url: str, traffic: Traffic, digits_repo: Path
) -> None:
    """The trade-off table's offline figures are the model cards' measured ones."""
    for name in MODELS:
        card = read_manifest(digits_repo / name)
        labels = f'model="{name}",version="{card.version}"'
        for metric, want in (
            ("rocketserve_model_top1_accuracy", card.metrics.top1),
            ("rocketserve_model_parameters", card.params),
            ("rocketserve_model_macs", card.macs),
        ):
            selector = f"{metric}{{{labels}}}"

            def value(selector: str = selector) -> list[float] | None:
                return finite_values(query(prometheus_url, selector)) or None

            assert wait_for(value, selector) == [pytest.approx(want)]


def test_every_rule_parses_and_evaluates(prometheus_url: str, traffic: Traffic) -> None:
    queries = [q for path in rule_files() for q in rule_queries(path)]
    assert queries
    assert query(prometheus_url, "sum by (model (broken")["status"] == "error"
    for q in queries:
        answer = query(prometheus_url, q.expr)
        assert answer["status"] == "success", f"{q.where}: {answer.get('error')}"

    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10.0).json()["data"]
        rules = [rule for group in groups["groups"] for rule in group["rules"]]
        done = all(not rule["lastEvaluation"].startswith("0001") for rule in rules)
        return rules if rules and done else None

    rules = wait_for(evaluated, "one evaluation of every rule")
    assert len(rules) == len(queries)
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert "RocketserveModelNotReady" not in firing and "RocketserveDown" not in firing


def test_tritons_dashboard_queries_read_the_service(prometheus_url: str, traffic: Traffic) -> None:
    """Queries of the kind a Triton dashboard makes, on Triton's metric names, as a real
    Prometheus ingests them: request rate and mean queue time per request by model."""
    for expr in (
        "sum by (model) (rate(nv_inference_request_success[1m]))",
        "sum by (model) (increase(nv_inference_queue_duration_us[1m]))"
        " / clamp_min(sum by (model) (increase(nv_inference_request_success[1m])), 1)",
        "sum by (model) (nv_inference_count) >= sum by (model) (nv_inference_exec_count)",
    ):

        def answered(expr: str = expr) -> list[float] | None:
            return finite_values(query(prometheus_url, expr)) or None

        assert wait_for(answered, expr), expr
