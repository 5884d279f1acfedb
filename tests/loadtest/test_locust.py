"""Headless locust runs against a real service (uvicorn subprocess on 127.0.0.1)."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.server import RunningService, start_service

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).parent / "locust"
LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(
    digits_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """The service on the shared test repository, with its default settings."""
    log = tmp_path_factory.mktemp("locust-service") / "service.log"
    with start_service(digits_repo, log, {"ROCKETSERVE_LOG_LEVEL": "warning"}) as running:
        yield running


def _locust(url: str, out: Path, *extra: str, seconds: int = 10) -> subprocess.CompletedProcess:
    cmd = [
        str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "16", "-r", "16",
        "-t", f"{seconds}s", "--host", url, "--csv", str(out / "run"), "--only-summary",
        "--loglevel", "WARNING", *extra,
    ]  # fmt: skip
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False
    )


def _stats(out: Path) -> dict[str, dict[str, str]]:
    with (out / "run_stats.csv").open(newline="") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def test_headless_run_mixes_models_and_transports_with_zero_failures(
    service: RunningService, tmp_path: Path
) -> None:
    proc = _locust(service.url, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _stats(tmp_path)
    total = stats.pop("Aggregated")
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    names = " ".join(stats)
    for part in ("digits-logreg", "digits-slow", "multipart", "json", "x1", "x4"):
        assert part in names, f"{part!r} missing from {sorted(stats)}"


def test_one_model_scenario_targets_only_that_model(
    service: RunningService, tmp_path: Path
) -> None:
    proc = _locust(
        service.url, tmp_path, "--tags", "one-model", "--target-model", "digits-slow", seconds=3
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _stats(tmp_path)
    assert int(stats.pop("Aggregated")["Failure Count"]) == 0
    assert stats and all(name.startswith("/predict digits-slow multipart x1") for name in stats)


def test_unknown_target_model_stops_the_run(service: RunningService, tmp_path: Path) -> None:
    proc = _locust(service.url, tmp_path, "--target-model", "no-such-model", seconds=30)
    assert proc.returncode != 0
    assert "no-such-model is not served" in proc.stderr
