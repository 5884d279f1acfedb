"""workers=auto: one process per core for light models, one otherwise; a number wins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtest.procstats import process_tree
from service.contract.model_card import ModelCard, model_dirs, read_manifest
from service.inference.processes import LIGHT_MS, MAX_AUTO_PROCESSES, choose_processes
from service.settings import Settings, usable_cores
from tests.support.cli import ROOT
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(120)


def cards(repo: Path) -> list[ModelCard]:
    return [read_manifest(d) for d in model_dirs(repo)]


def with_lone_call(card: ModelCard, ms: float | None) -> ModelCard:
    """The card, its batch-1 timing set to ``ms`` (None: removed)."""
    rows = [r for r in card.profile.rows if r.batch_size != 1]
    if ms is not None:
        one = next(r for r in card.profile.rows if r.batch_size == 1)
        rows.insert(0, one.model_copy(update={"p50_ms": ms}))
    return card.model_copy(update={"profile": card.profile.model_copy(update={"rows": rows})})


def settings(repo: Path, **kw: object) -> Settings:
    return Settings(model_repository=repo, provider="cpu", **kw)  # type: ignore[arg-type]


def test_light_models_get_one_process_per_core_up_to_the_cap(digits_repo: Path) -> None:
    light = cards(digits_repo)
    assert all(r.p50_ms <= LIGHT_MS for c in light for r in c.profile.rows if r.batch_size == 1)
    assert choose_processes(settings(digits_repo), light, cores=2)[0] == 2
    assert choose_processes(settings(digits_repo), light, cores=4)[0] == 4
    many, why = choose_processes(settings(digits_repo), light, cores=64)
    assert many == MAX_AUTO_PROCESSES and "each with its own event loop" in why
    assert choose_processes(settings(digits_repo), light, cores=1) == (1, "one core")


def test_one_heavy_or_untimed_model_keeps_one_process(digits_repo: Path) -> None:
    light = cards(digits_repo)
    heavy = [with_lone_call(light[0], LIGHT_MS * 3), *light[1:]]
    n, why = choose_processes(settings(digits_repo), heavy, cores=8)
    assert n == 1 and light[0].name in why and "every core" in why
    untimed = [*light[:-1], with_lone_call(light[-1], None)]
    n, why = choose_processes(settings(digits_repo), untimed, cores=8)
    assert n == 1 and "no batch-1 timing" in why


def test_explicit_control_and_a_set_number(digits_repo: Path) -> None:
    light = cards(digits_repo)
    explicit = settings(digits_repo, model_control_mode="explicit")
    n, _ = choose_processes(explicit, light, cores=8)
    assert n == 8  # the workers keep their loads in step (tests/service/test_control.py)
    set_three = settings(digits_repo, workers=3, model_control_mode="explicit")
    assert choose_processes(set_three, light, cores=1) == (3, "set by workers")
    assert settings(digits_repo, workers="AUTO").workers == "auto"
    with pytest.raises(ValueError, match="'auto' or an integer from 1 to 64"):
        settings(digits_repo, workers=0)


def test_the_default_runs_the_chosen_processes_and_serves(
    digits_repo: Path, tmp_path: Path
) -> None:
    """``python -m service`` with no workers setting: the processes it logs, it runs."""
    expected, _ = choose_processes(settings(digits_repo), cards(digits_repo), usable_cores())
    # digits models are light: one process per usable core, up to the cap (2 on the CI machine)
    assert expected == min(usable_cores(), MAX_AUTO_PROCESSES)
    port = free_port()
    log = tmp_path / "service.log"
    env = {k: v for k, v in os.environ.items() if k != "ROCKETSERVE_WORKERS"}
    argv = [sys.executable, "-m", "service", "--model-repository", str(digits_repo)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert f"{expected} worker process(es)" in text
        if expected > 1:
            workers = [
                pid
                for pid in process_tree(proc.pid)
                if "multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            ]
            assert len(workers) == expected, text
        tensor = [[[0.5] * 8] * 8]
        for _ in range(4 * expected):  # new connections: spread over the processes
            answer = httpx.post(url + "/predict", json={"tensor": [tensor]}, timeout=10)
            assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        proc.wait(15)
