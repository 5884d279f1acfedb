"""``scripts/serving-figures.sh``: every quoted serving figure measured again, a zoo paused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export.lanes import STATE_FILE, is_stopped
from export.report import serving_roles
from service.contract.model_card import model_dirs, read_manifest
from tests.support.zoo import zoo_cards

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)

TRAINER = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTSTP, lambda *_: os.kill(os.getpid(), signal.SIGSTOP))\n"
    "time.sleep(600)"
)


def test_the_script_measures_every_figure_and_gives_a_paused_zoo_its_cores_back(
    digits_repo: Path, tmp_path: Path
) -> None:
    results, zoo = tmp_path / "results", tmp_path / "zoo"
    (zoo / ".work").mkdir(parents=True)
    # A lane's trainer takes SIGTSTP and stops itself (export/training/pause.py); the default
    # action would not do: the kernel drops SIGTSTP for an orphaned process group (a suite started
    # under setsid or nohup).
    lane = subprocess.Popen([sys.executable, "-c", TRAINER, "export", "zoo"])
    try:
        state = {"lanes": {"1": {"entry": "kd-wrn-16-1", "pid": lane.pid, "threads": 1}}}
        (zoo / ".work" / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        env = {
            **os.environ,
            "PY": sys.executable,
            "QUICK": "1",
            "REPO": str(digits_repo),
            "RESULTS": str(results),
            "ZOO_DIR": str(zoo),
            "TAG": "digits",
            "AGAINST_RAW": "digits-logreg digits-slow",
            "SWEEP": "digits-logreg",
            "LARGEST": "digits-slow",
            "SMALLEST": "digits-logreg",
            "HEAVY_INT8": "digits-slow",
        }
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "serving-figures.sh")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=580,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "kd-wrn-16-1: paused" in proc.stdout and "kd-wrn-16-1: continued" in proc.stdout
        assert not is_stopped(lane.pid)  # its cores given back
    finally:
        lane.send_signal(signal.SIGKILL)
        lane.wait()
    produced = {p.name for p in results.iterdir()}
    assert produced >= {
        "served-vs-raw-digits-logreg.txt",
        "served-vs-raw-digits-slow.txt",
        "ramp-digits-budget-20ms.md",
        "ramp-digits-budget-20ms.png",
        "ramp-digits-budget-20ms.json",
        "ramp-digits-budget-20ms.csv",
        "bench.csv",
        "overload-digits.json",
        "overload-digits-keep-alive-5s.json",
        "overload-digits-max-in-flight-128.json",
        "router-cost-digits.txt",
        "lone-request-digits.txt",
        "inline-digits.txt",
        "workers-digits.txt",
        "profile-digits-c64.txt",
        "ort-threads-digits.txt",
        "locust-digits.csv",
        "locust-digits.txt",
        "metrics-cost.txt",
        "protocols-digits.txt",
    }
    against_raw = (results / "served-vs-raw-digits-slow.txt").read_text(encoding="utf-8")
    assert "model digits-slow" in against_raw and "raw best:" in against_raw
    assert "machine:" in against_raw
    ramp = json.loads((results / "ramp-digits-budget-20ms.json").read_text(encoding="utf-8"))
    assert ramp["steps"], "the ramp recorded no step"
    routing = (results / "router-cost-digits.txt").read_text(encoding="utf-8")
    assert "us per route" in routing and "impossible+fallback" in routing
    protocols = (results / "protocols-digits.txt").read_text(encoding="utf-8")
    assert "grpc / rest v2 tensor, tensor, c=4" in protocols and "machine:" in protocols
    metrics = (results / "metrics-cost.txt").read_text(encoding="utf-8")
    assert "us per request" in metrics and "mmap files" in metrics and "machine:" in metrics
    lone = (results / "lone-request-digits.txt").read_text(encoding="utf-8")
    assert "after 2 ms pauses" in lone and "in the service" in lone
    inline = (results / "inline-digits.txt").read_text(encoding="utf-8")
    assert "INLINE_INFERENCE_MAX_MS=2" in inline and "c=2 " in inline
    workers = (results / "workers-digits.txt").read_text(encoding="utf-8")
    assert "--workers 1" in workers and "--workers auto" in workers and "raw best:" in workers
    # against raw, each model keeps its role in the repository: the smallest a student's targets
    smallest = workers.split("-- digits-logreg against raw, --workers 1")[1].split("\n-- ")[0]
    assert "target for a student" in smallest and "largest model" not in smallest
    threads = (results / "ort-threads-digits.txt").read_text(encoding="utf-8")
    assert "INTRA_OP_SPINNING=true" in threads and "c=64 " in threads
    locust = (results / "locust-digits.txt").read_text(encoding="utf-8")
    assert "failures: 0" in locust and "machine:" in locust


def _roles_run(tmp_path: Path, repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "serving-figures.sh")],
        cwd=ROOT,
        env={
            **os.environ,
            "PY": sys.executable,
            "REPO": str(repo),
            "RESULTS": str(tmp_path / "results"),
            "ZOO_DIR": str(tmp_path / "zoo"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_models_it_measures_are_read_from_the_cards(tmp_path: Path) -> None:
    """Unless named, the roles come from models/'s cards (export.report.serving_roles): a new
    zoo is measured without editing the script; a step whose role no card fills stops it."""
    repo = ROOT / "models"
    roles = serving_roles([read_manifest(d) for d in model_dirs(repo)])
    proc = _roles_run(tmp_path, repo, STEPS="none")
    assert proc.returncode == 0, proc.stderr
    assert (
        f"models by role: LARGEST={roles['LARGEST']} HEAVY_INT8={roles['HEAVY_INT8']} "
        f"SMALLEST={roles['SMALLEST']}"
    ) in proc.stdout
    named = _roles_run(tmp_path, repo, STEPS="none", SMALLEST="cifar10-baseline-wrn-16-1")
    assert "SMALLEST=cifar10-baseline-wrn-16-1" in named.stdout
    lone = tmp_path / "lone"
    student = next(c.name for c in zoo_cards() if c.precision == "int8" and c.training.teacher)
    shutil.copytree(repo / student, lone / student)
    refused = _roles_run(tmp_path, lone, STEPS="routing lone")  # routing needs no role
    assert refused.returncode == 2 and "has no model for LARGEST" in refused.stderr
    assert "== " not in refused.stdout  # refused before any step ran
