"""``export pick``: the served repository gets the teacher, each family's best and the front."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.__main__ import main
from export.lanes import STATE_FILE, is_stopped
from export.pick import ZOO_CARDS_FILENAME, choose, pick, read_zoo_cards, report_cards
from export.repository import verify_repository
from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    ProfileRow,
    model_dirs,
    read_manifest,
    write_manifest,
)
from tests.support.cli import run_module
from tests.support.onnx_repo import build_digits_model

# name: (architecture, method, top-1, batch-1 p50 ms, derived_from)
ZOO = {
    "teacher": ("wrn-40-2", "baseline", 0.93, 3.0, None),
    "teacher-int8": ("wrn-40-2", "baseline", 0.929, 1.8, "teacher"),
    "alone": ("wrn-16-1", "baseline", 0.88, 0.35, None),
    # measured fastest of its kind by noise: the same graph as rocket-kd-int8, so off the front
    "alone-int8": ("wrn-16-1", "baseline", 0.879, 0.30, "alone"),
    "rocket-kd": ("wrn-16-1", "rocket-kd", 0.905, 0.36, None),
    "rocket-kd-int8": ("wrn-16-1", "rocket-kd", 0.904, 0.31, "rocket-kd"),
    "kd": ("wrn-16-1", "kd", 0.89, 0.36, None),
    "mobile": ("mobilenetv2-0.5", "baseline", 0.85, 0.60, None),
    "tiny": ("shallow-64", "baseline", 0.70, 0.10, None),  # the fastest: on the front
}


def _retrain(card: ModelCard, arch: str, method: str, top1: float, p50: float,
             derived: str | None) -> ModelCard:  # fmt: skip
    rows = tuple(
        ProfileRow(batch_size=b, p50_ms=p50 * b, p99_ms=p50 * b * 1.2, images_per_s=1000 / p50)
        for b in (1, 8, 32)
    )
    teacher = "teacher" if method != "baseline" else None
    return card.model_copy(
        update={
            "training": card.training.model_copy(
                update={"architecture": arch, "method": method, "teacher": teacher}
            ),
            "metrics": card.metrics.model_copy(update={"top1": top1}),
            "profile": card.profile.model_copy(update={"rows": rows}),
            "derived_from": derived,
            "precision": "int8" if derived else "fp32",
        }
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("zoo")
    for name, spec in ZOO.items():
        card = build_digits_model(repo, name)
        write_manifest(repo / name, _retrain(card, *spec))  # the file and its hash unchanged
    return repo


def test_choose_takes_teacher_best_per_family_and_the_front(zoo: Path) -> None:
    cards = [read_manifest(d) for d in model_dirs(zoo)]
    picked = choose(cards)
    assert set(picked.reasons) == {
        "teacher", "teacher-int8",  # the teacher with its variant
        "rocket-kd", "rocket-kd-int8",  # the best wrn-16-1 with its variant
        "mobile", "tiny",  # the best (only) of their families
    }  # fmt: skip
    assert picked.reasons["teacher-int8"] == "the teacher (int8)"
    assert picked.reasons["rocket-kd"] == "most accurate wrn-16-1 (90.50% top-1)"
    assert "kd" not in picked.reasons and "alone-int8" not in picked.reasons
    assert "alone" in choose(cards, also=["alone"]).reasons
    with pytest.raises(ModelRepositoryError, match="not in the zoo: nope"):
        choose(cards, also=["nope"])


def test_pick_copies_verifiable_models_and_reports_the_whole_zoo(zoo: Path, tmp_path: Path) -> None:
    into = tmp_path / "models"
    stale = build_digits_model(into, "old-model")  # served before, not picked now
    assert stale.name == "old-model"
    proc = run_module("export", "pick", str(zoo), "--into", str(into))
    assert proc.returncode == 0, proc.stderr
    assert "rocket-kd: most accurate wrn-16-1" in proc.stdout
    served = {d.name for d in model_dirs(into)}
    assert served == {"teacher", "teacher-int8", "rocket-kd", "rocket-kd-int8", "mobile", "tiny"}
    n_models, n_versions, problems = verify_repository(into)
    assert n_versions == n_models
    assert problems == [] and n_models == 6
    assert {c.name for c in read_zoo_cards(into)} == set(ZOO)
    cards, names = report_cards(into)
    assert len(cards) == len(ZOO) and names == served
    report = (into / "REPORT.md").read_text(encoding="utf-8")
    assert report.startswith("# Model zoo: digits (9 models trained, 6 served)")
    table = [r for r in report.split("\n## ")[0].splitlines() if r.startswith("| ")]
    rows = {r.split("|")[1].strip(): r.rstrip() for r in table}
    assert rows["rocket-kd"].endswith("| ✓ |") and rows["kd"].endswith("|  |")


def test_pick_refuses_a_missing_config_and_a_file_for_into(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into, missing = tmp_path / "models", tmp_path / "nonexistent.yaml"
    assert main(["pick", str(zoo), "--into", str(into), "--config", str(missing)]) == 1
    assert capsys.readouterr().err == f"error: {missing}: no such zoo config\n"
    assert not into.exists()
    afile = tmp_path / "afile"
    afile.write_text("", encoding="utf-8")
    assert main(["pick", str(zoo), "--into", str(afile)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: {afile}: is a file, not a folder for the served models\n"
    )


def test_evaluate_keeps_the_unserved_zoo_in_the_report(zoo: Path, tmp_path: Path) -> None:
    into = tmp_path / "models"
    pick(zoo, into)
    (into / "REPORT.md").unlink()
    proc = run_module("export", "evaluate", str(into), "--profile-runs", "3")
    assert proc.returncode == 0, proc.stderr
    report = (into / "REPORT.md").read_text(encoding="utf-8")
    assert "(9 models trained, 6 served)" in report and "| alone | fp32 |" in report
    shutil.rmtree(into / "mobile")
    (into / ZOO_CARDS_FILENAME).write_text("not json", encoding="utf-8")
    with pytest.raises(ModelRepositoryError, match="unreadable zoo cards"):
        read_zoo_cards(into)


def test_evaluate_refuses_a_repository_a_zoo_trains_into(zoo: Path, tmp_path: Path) -> None:
    """Its figures would be measured beside training: a live lane is refused, a paused one not."""
    repo = tmp_path / "repo"
    shutil.copytree(zoo, repo)
    (repo / ".work").mkdir(exist_ok=True)
    lane = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "export", "zoo"])
    try:
        state = {"lanes": {"1": {"entry": "kd-wrn-16-1", "pid": lane.pid, "threads": 2}}}
        (repo / ".work" / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        proc = run_module("export", "evaluate", str(repo), "--profile-runs", "3")
        assert proc.returncode == 1 and proc.stdout == ""
        assert "a zoo is training into it (kd-wrn-16-1)" in proc.stderr
        lane.send_signal(signal.SIGSTOP)  # as zoo-pause leaves it
        while not is_stopped(lane.pid):
            time.sleep(0.05)
        proc = run_module("export", "evaluate", str(repo), "--profile-runs", "3")
        assert proc.returncode == 0, proc.stderr
    finally:
        lane.kill()
        lane.wait()
