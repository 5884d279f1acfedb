"""``python -m loadtest.ramp``: shares per step, mean top-1 served, where the router sends load."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from PIL import Image

from loadtest.payloads import ModelInfo
from loadtest.ramp_load import Candidate, StepStats, classify, summarize
from loadtest.ramp_report import csv_rows, markdown_table
from service.contract.model_card import read_manifest
from tests.service.test_routing import (  # a 27M-MAC student, a 328M-MAC teacher
    FAST,
    FAST_KEY,
    SLOW,
    SLOW_KEY,
)
from tests.support.cli import ROOT, run_module
from tests.support.server import running_service

LABELS = tuple("abc")


def _model(name: str) -> ModelInfo:
    return ModelInfo(name, 1, LABELS, "rgb", "toy")


def _answer(name: str, accuracy: float, total_ms: float = 1.0) -> dict:
    top = [{"label": "b", "index": 1, "score": 0.7}, {"label": "a", "index": 0, "score": 0.2}]
    routing = {"chosen": f"{name}:1", "accuracy": accuracy, "predicted_p99_ms": 1.0}
    timing = {"queue_ms": 0.0, "inference_ms": 0.5, "total_ms": total_ms}
    return {"model": name, "version": 1, "predictions": [top], "routing": routing, "timing": timing}


def test_shares_sum_to_one_and_mean_top1_is_share_weighted() -> None:
    models = {"big": _model("big"), "small": _model("small")}
    stats = StepStats()
    answers = [("big", 0.84)] * 3 + [("small", 0.79)] * 7
    for i, (name, accuracy) in enumerate(answers):
        outcome = classify(200, _answer(name, accuracy, total_ms=i / 2), models)
        assert outcome.kind == "ok" and outcome.detail == f"{name}:1"
        stats.answered(str(outcome.detail), outcome.accuracy, (i + 1) / 1000.0, outcome.service_s)
    unmet = {"error": {"code": "no_model_meets_objective", "message": "..."}}
    assert classify(422, unmet, models).kind == "unmet"
    stats.unmet += 1
    other = {"error": {"code": "invalid_objective", "message": "bad"}}
    kind, reason, *_ = classify(422, other, models)
    assert kind == "error" and "422" in str(reason)
    stats.failed(str(reason))
    assert classify(200, _answer("nobody", 0.5), models).kind == "error"
    assert classify(200, {"model": "big", "predictions": []}, models).kind == "error"
    assert classify(503, "overloaded", models).kind == "error"

    step = summarize(stats, concurrency=4, duration_s=2.0, budget_ms=5.0)
    assert step.shares == {"small:1": 0.7, "big:1": 0.3}  # largest first
    assert math.isclose(sum(step.shares.values()), 1.0)
    assert math.isclose(step.mean_accuracy, 0.3 * 0.84 + 0.7 * 0.79)
    assert (step.ok, step.unmet, step.errors, step.requests) == (10, 1, 1, 12)
    assert step.throughput_rps == 5.0 and step.within_budget is False  # p99 of 1..10 ms
    assert step.service_p99_ms < step.p99_ms  # the service's own timing: 0..4.5 ms
    assert step.first_error == reason

    candidates = [
        Candidate("big:1", models["big"], 0.84),
        Candidate("small:1", models["small"], 0.79),
    ]
    [row] = csv_rows([step], candidates, 5.0, "test machine")
    assert (row["share:big:1"], row["share:small:1"]) == (0.3, 0.7)
    header, rule, line = markdown_table([step], 5.0)
    assert header.count("|") == rule.count("|") == line.count("|") == 11
    assert "| 4 |" in line and "small:1 70 %, big:1 30 %" in line and "1 (8 %)" in line

    empty = summarize(StepStats(unmet=3), 8, 1.0, 5.0)  # every request refused
    assert empty.shares == {} and empty.within_budget is None and math.isnan(empty.p99_ms)
    assert "| - |" in markdown_table([empty], 5.0)[2]


@pytest.fixture(scope="module")
def two_speed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's fast int8 student and its slow, more accurate fp32 teacher."""
    repo = tmp_path_factory.mktemp("ramp-repo")
    for name in (FAST, SLOW):
        shutil.copytree(ROOT / "models" / name, repo / name)
    return repo


def _key(model_dir: Path) -> str:
    """The router's name for the served version of a model: ``name:version``."""
    return f"{model_dir.name}:{read_manifest(model_dir).version}"


def _card_top1(repo: Path) -> dict[str, float]:
    return {_key(d): read_manifest(d).metrics.top1 for d in repo.iterdir() if d.is_dir()}


def _ramp(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("loadtest.ramp", *args, timeout=120)


def _steps(out: Path, repo: Path) -> list[dict[str, str]]:
    """The CSV's rows, checked: a share column per model, shares summing to 1, the mean top-1
    served equal to the share-weighted card top-1, no errors."""
    with (out / "ramp.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    top1 = _card_top1(repo)
    assert [int(r["concurrency"]) for r in rows] == [1, 2]  # the quick ramp
    for row in rows:
        shares = {
            k.removeprefix("share:"): float(v) for k, v in row.items() if k.startswith("share:")
        }
        assert set(shares) == set(top1)
        assert int(row["errors"]) == 0
        assert int(row["requests"]) == int(row["ok"]) + int(row["unmet_422"])
        if int(row["ok"]) == 0:
            continue
        assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-5)
        weighted = sum(share * top1[key] for key, share in shares.items())
        assert math.isclose(float(row["mean_top1_served"]), weighted, abs_tol=1e-5)
        assert float(row["p50_ms"]) <= float(row["p99_ms"])
        assert row["within_budget"] == (
            "yes" if float(row["p99_ms"]) <= float(row["latency_budget_ms"]) else "no"
        )
    return rows


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_loose_budget_sends_every_request_to_the_accurate_teacher(
    two_speed_repo: Path, tmp_path: Path
) -> None:
    proc = _ramp(
        "--model-repository", str(two_speed_repo), "--latency-budget-ms", "100000",
        "--quick", "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = _steps(tmp_path, two_speed_repo)
    for row in rows:
        assert int(row["ok"]) > 0 and int(row["unmet_422"]) == 0
        assert float(row[f"share:{SLOW_KEY}"]) == 1.0 and row["within_budget"] == "yes"
    assert "machine:" in proc.stdout and "load average at the end:" in proc.stdout
    table = (tmp_path / "ramp.md").read_text()
    assert table.count(f"{SLOW_KEY} 100 %") == 2 and "p99 within 100000 ms" in table
    report = json.loads((tmp_path / "ramp.json").read_text())
    assert report["latency_budget_ms"] == 100000
    assert [c["model"] for c in report["candidates"]] == [SLOW_KEY, FAST_KEY]  # by top-1
    assert report["load_average_start"] and report["load_average_end"]
    assert [s["concurrency"] for s in report["steps"]] == [1, 2]
    after = [s["router_after_step"][SLOW_KEY]["prediction"] for s in report["steps"]]
    assert "measured at load" not in after  # live figures (or the queued work above them)
    with Image.open(tmp_path / "ramp.png") as png:
        assert png.format == "PNG" and png.size[0] >= 600


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_tight_budget_sends_the_traffic_to_the_fast_student(
    two_speed_repo: Path, tmp_path: Path
) -> None:
    with running_service(two_speed_repo, {"ROCKETSERVE_LOG_LEVEL": "warning"}) as (url, _):
        models = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=10).json()["models"]}
        fast, slow = (
            models[n]["versions"][-1]["routing"]["predicted_p99_ms"] for n in (FAST, SLOW)
        )
        # Just under the teacher's prediction before traffic (its batch-1 time measured at load
        # plus overhead): the teacher never qualifies, the student has the most room it can get.
        budget = slow - 0.01
        assert fast < budget
        proc = _ramp(
            "--url", url, "--latency-budget-ms", f"{budget:.3f}", "--quick", "--out", str(tmp_path)
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = _steps(tmp_path, two_speed_repo)
    for row in rows:
        assert float(row[f"share:{SLOW_KEY}"]) == 0.0  # never the teacher
        if int(row["ok"]):
            assert float(row[f"share:{FAST_KEY}"]) == 1.0
    # On a loaded machine the student's live p99 may exceed the budget as well (then 422s), but
    # its first requests, before it has live figures, always go to it.
    warmup = json.loads((tmp_path / "ramp.json").read_text())["warmup"]
    assert warmup["ok"] > 0 and warmup["shares"] == {FAST_KEY: 1.0}, proc.stdout


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    proc = _ramp("--model-repository", str(tmp_path / "missing"), "--latency-budget-ms", "5")
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    proc = _ramp("--url", "http://127.0.0.1:9", "--latency-budget-ms", "5", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("ramp: error:")
    for bad in (["--latency-budget-ms", "0"], ["--latency-budget-ms", "5", "--concurrency", "0"]):
        proc = _ramp("--url", "http://127.0.0.1:9", *bad)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "ramp.csv").exists()
