"""The zoo: packaged configs, and a reduced end-to-end run through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from export.__main__ import main
from export.distill import METHODS
from export.models import ARCHITECTURES
from export.training import resolve_config
from export.zoo import (
    ZOO_KEYS,
    ZOO_TEACHER,
    ZooError,
    ZooOptions,
    _training_config,
    config_path,
    load_zoo_config,
)
from service.contract.model_card import model_dirs, read_manifest
from tests.support.cli import run_module

ALL_METHODS = {"baseline", "kd", "fitnet", "mimic", "rocket", "rocket-kd"}
# The CIFAR-10 zoo is cut to a CPU budget: the Rocket Launching comparison and hard compression.
CIFAR_METHODS = ALL_METHODS


def _export(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_module("export", *args, timeout=timeout)


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_packaged_config_covers_every_method_and_resolves(dataset: str) -> None:
    config = load_zoo_config(config_path(dataset))
    assert config["dataset"] == dataset
    entries = [config["teacher"], *config["students"]]
    methods = {e.get("method", config.get("defaults", {}).get("method")) for e in entries}
    assert methods == (ALL_METHODS if dataset == "digits" else CIFAR_METHODS)
    assert set(METHODS) >= ALL_METHODS
    assert any(str(e["student"]).startswith("mobilenetv2") for e in config["students"])
    assert sum(1 for e in entries if "int8" in e.get("variants", [])) >= 2
    for entry in entries:
        assert entry["student"] in ARCHITECTURES
        cfg: dict[str, Any] = {**config.get("defaults", {}), **entry}
        for key in ZOO_KEYS:  # the zoo's own keys (name, variants, second-seed conditions)
            cfg.pop(key, None)
        if cfg.get("teacher") == ZOO_TEACHER:
            cfg["teacher"] = config["teacher"]["student"]
        resolve_config(cfg)  # raises ConfigError on an unknown key or a bad value


@pytest.mark.parametrize("dataset", ["digits", "cifar10"])
def test_every_entry_of_a_smoke_run_resolves(dataset: str, tmp_path: Path) -> None:
    """``--max-epochs 1`` cuts every entry to one epoch; FitNets' hint stage keeps its share."""
    config = load_zoo_config(config_path(dataset))
    for entry in [config["teacher"], *config["students"]]:
        cfg = _training_config(entry, config, ZooOptions(max_epochs=1), tmp_path)
        if cfg.get("teacher") == ZOO_TEACHER:
            cfg["teacher"] = config["teacher"]["student"]
        resolved = resolve_config(cfg)
        assert resolved["epochs"] == 1
        if entry.get("hint_epochs") is not None:
            full = entry.get("epochs", config["defaults"]["epochs"])
            assert resolved["hint_epochs"] == pytest.approx(entry["hint_epochs"] / full)


def test_the_cifar10_plan_holds_every_study_of_the_report() -> None:
    """Every method on WRN-16-1 at one budget, the three Rocket ablations beside Rocket at theirs,
    deep vs shallow, MobileNet alone and with KD, and second seeds."""
    config = load_zoo_config(config_path("cifar10"))
    default_epochs = config["defaults"]["epochs"]
    runs = [
        (e["method"], e["student"], e.get("epochs", default_epochs), e.get("seed", 0), e)
        for e in config["students"]
    ]
    main = {m for m, arch, ep, seed, _ in runs if arch == "wrn-16-1" and ep == default_epochs}
    assert main == ALL_METHODS
    short = [e for m, _, ep, _, e in runs if m == "rocket" and ep < default_epochs]
    flags = [(e.get("gradient_block", True), e.get("sharing"), e.get("joint", True)) for e in short]
    assert (True, "interval", True) in flags  # Rocket itself at the ablation's budget
    assert {(False, "interval", True), (True, "none", True), (True, "interval", False)} <= set(
        flags
    )
    shallow = {m for m, arch, *_ in runs if arch.startswith("shallow")}
    assert shallow == {"baseline", "mimic"}
    assert {m for m, arch, *_ in runs if arch.startswith("mobilenetv2")} == {"baseline", "kd"}
    seeds = {m for m, arch, ep, seed, _ in runs if seed != 0 and ep == default_epochs}
    assert seeds == ALL_METHODS
    assert config["teacher"]["epochs"] >= default_epochs >= 30
    # pick serves each architecture's most accurate network, whichever seed or study it is from
    assert all("int8" in e["variants"] for e in [config["teacher"], *config["students"]])


def test_a_broken_config_is_a_zoo_error(tmp_path: Path) -> None:
    path = tmp_path / "zoo.yaml"
    path.write_text("dataset: digits\nteacher: {name: t, student: resnet8}\nstudents: [{}]\n")
    with pytest.raises(ZooError, match="needs a 'name'"):
        load_zoo_config(path)
    path.write_text("dataset: [unclosed\n")
    with pytest.raises(ZooError, match="cannot read zoo config"):
        load_zoo_config(path)


@pytest.fixture(scope="module")
def zoo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits zoo cut to the teacher, KD and Rocket, one epoch on 200 images."""
    out = tmp_path_factory.mktemp("zoo") / "repo"
    proc = _export(
        "zoo", "--dataset", "digits", "--out", str(out),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--only", "kd-resnet8", "rocket-resnet8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity ok" in proc.stdout
    return out


def test_zoo_writes_models_variants_report_and_plot(zoo_repo: Path) -> None:
    names = [d.name for d in model_dirs(zoo_repo)]
    assert names == [
        "digits-kd-resnet8",
        "digits-kd-resnet8-int8",
        "digits-rocket-resnet8",
        "digits-rocket-resnet8-int8",
        "digits-teacher-resnet20",
        "digits-teacher-resnet20-int8",
    ]
    kd = read_manifest(zoo_repo / "digits-kd-resnet8")
    assert kd.training.method == "kd" and kd.training.teacher == "digits-teacher-resnet20"
    assert kd.training.config["teacher"] == "digits-teacher-resnet20"
    assert "out_dir" not in kd.training.config and kd.training.epochs == 1
    assert kd.metrics.n == 360 and kd.profile.threads == 1
    assert kd.training.companions == {}  # its teacher is a model of its own, not a companion
    rocket = read_manifest(zoo_repo / "digits-rocket-resnet8")
    assert set(rocket.training.companions) == {"booster"}
    assert 0.1 < rocket.training.companions["booster"] <= 1.0
    int8 = read_manifest(zoo_repo / "digits-kd-resnet8-int8")
    assert (int8.precision, int8.derived_from) == ("int8", "digits-kd-resnet8")
    # Every student's agreement with the zoo's teacher, Rocket's too (it learns from its booster)
    for name in ("digits-kd-resnet8", "digits-rocket-resnet8", "digits-rocket-resnet8-int8"):
        agreement = read_manifest(zoo_repo / name).metrics.teacher_agreement
        assert agreement is not None and 0.0 <= agreement <= 1.0, name
    assert read_manifest(zoo_repo / "digits-teacher-resnet20").metrics.teacher_agreement is None
    assert int8.size_bytes < kd.size_bytes and int8.macs == kd.macs
    # Each trained network's card carries its learning curve (one epoch here); a variant's is
    # its parent's.
    (epoch,) = kd.training.history
    assert (epoch.epoch, epoch.stage) == (1, None) and epoch.img_per_s > 0
    assert 0.0 <= epoch.test_top1 <= 1.0 and epoch.epoch_time_s > 0
    # ended before the card was written (created_at has whole seconds)
    assert epoch.finished_at is not None and epoch.finished_at < kd.created_at.timestamp() + 1
    assert len(rocket.training.history) == 1 and int8.training.history == ()

    report = (zoo_repo / "REPORT.md").read_text()
    main_table = report.split("\n## ")[0]
    table = [line for line in main_table.splitlines() if line.startswith("| digits-")]
    assert "## Training" in report and "Best student: **digits-" in report
    assert "Elapsed training time: 0 h 0" in report  # three one-epoch networks on 200 images
    assert len(table) == 6
    latencies = [float(line.split("|")[5]) for line in table]
    assert latencies == sorted(latencies)
    with Image.open(zoo_repo / "pareto.png") as image:
        assert image.format == "PNG"
    convergence = report.split("## Convergence")[1].split("\n## ")[0]
    curve_rows = [line for line in convergence.splitlines() if line.startswith("| digits-")]
    assert len(curve_rows) == 3  # the three trained networks, not their variants
    assert "![learning curves](curves.png)" in convergence
    with Image.open(zoo_repo / "curves.png") as image:
        assert image.format == "PNG"


def test_verify_and_evaluate_commands_on_the_zoo(
    zoo_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(zoo_repo)]) == 0
    assert "ok (6 models, 6 versions)" in capsys.readouterr().out

    manifest = zoo_repo / "digits-kd-resnet8" / "manifest.json"
    before = json.loads(manifest.read_text())
    tampered = {**before, "metrics": {**before["metrics"], "top1": 0.0}, "macs": 1}
    manifest.write_text(json.dumps(tampered))
    agreement = {
        name: read_manifest(zoo_repo / name).metrics.teacher_agreement
        for name in ("digits-rocket-resnet8", "digits-rocket-resnet8-int8", "digits-kd-resnet8")
    }
    proc = _export("evaluate", str(zoo_repo), "--profile-runs", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Every student's agreement is re-measured against the zoo's teacher, Rocket's too (its card
    # names its booster, not a model of the repository); the teacher has none.
    for name, before_agreement in agreement.items():
        again = read_manifest(zoo_repo / name).metrics
        assert before_agreement is not None and again.teacher_agreement == before_agreement, name
    assert read_manifest(zoo_repo / "digits-teacher-resnet20").metrics.teacher_agreement is None
    after = json.loads(manifest.read_text())
    assert after["metrics"]["top1"] == before["metrics"]["top1"] and after["macs"] == before["macs"]
    assert after["created_at"] == before["created_at"]
    assert after["profile"]["threads"] == before["profile"]["threads"] == 1
    assert "digits-kd-resnet8: top-1 0.00% ->" in proc.stdout
    assert (zoo_repo / "REPORT.md").is_file()
    assert main(["verify", str(zoo_repo)]) == 0


def test_resume_keeps_what_is_published_and_retrains_nothing(zoo_repo: Path) -> None:
    before = {d.name: read_manifest(d).created_at for d in model_dirs(zoo_repo)}
    proc = _export(
        "zoo", "--dataset", "digits", "--out", str(zoo_repo),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--only", "kd-resnet8", "rocket-resnet8", "--resume",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already published") == 3 and "parity" not in proc.stdout
    after = {d.name: read_manifest(d) for d in model_dirs(zoo_repo)}
    assert {n: c.created_at for n, c in after.items()} == before
    assert all(c.version == 1 for c in after.values())


def test_zoo_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "zoo.yaml"
    bad.write_text("dataset: digits\n")
    code = main(["zoo", "--dataset", "digits", "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"error: {bad}: missing key 'teacher'"
    code = main(["zoo", "--dataset", "cifar10", "--out", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path / "nowhere")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data directory") and len(err.splitlines()) == 1


def test_lanes_train_the_students_in_parallel_processes(
    zoo_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--lanes 2: the teacher and Rocket (which does not need it) side by side, KD once the
    teacher is done; one child process per entry; same models as in turn."""
    out = tmp_path_factory.mktemp("zoo-lanes") / "repo"
    proc = _export(
        "zoo", "--dataset", "digits", "--out", str(out),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--only", "kd-resnet8", "rocket-resnet8", "--lanes", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines.index(f"lane 1: teacher-resnet20 ({_share(2)} torch thread(s)); log: "
                       f"{out / '.work' / 'lane-1.log'}") == 0  # fmt: skip
    assert lines[1].startswith("lane 2: rocket-resnet8 (")
    kd_start = next(i for i, line in enumerate(lines) if ": kd-resnet8 (" in line)
    assert kd_start > lines.index("lane 1: teacher-resnet20 done")
    assert proc.stdout.count(" done") == 3
    logs = {p.name: p.read_text() for p in (out / ".work").glob("lane-*.log")}
    assert sorted(logs) == ["lane-1.log", "lane-2.log"]
    assert "[digits-teacher-resnet20] parity ok" in logs["lane-1.log"]
    assert "[digits-rocket-resnet8] parity ok" in logs["lane-2.log"]
    assert "[digits-rocket-resnet8]" not in logs["lane-1.log"]  # each lane its own entries
    kd_logs = [name for name, text in logs.items() if "[digits-kd-resnet8] parity ok" in text]
    assert len(kd_logs) == 1
    # The KD child found the teacher published and trained it no further; Rocket's child never
    # touched it (it would have logged it too).
    every = "".join(logs.values())
    assert every.count("[digits-teacher-resnet20] already published") == 1
    assert "[digits-teacher-resnet20] already published" in logs[kd_logs[0]]
    assert every.count("[digits-teacher-resnet20] trained in") == 2
    assert {d.name for d in model_dirs(out)} == {d.name for d in model_dirs(zoo_repo)}
    assert (out / "REPORT.md").is_file() and main(["verify", str(out)]) == 0


def test_with_teacher_first_a_student_run_alone_loads_the_teacher(
    zoo_repo: Path, tmp_path: Path
) -> None:
    """A lane's child runs ``--only STUDENT --resume``; with ``teacher_first`` it loads the
    finished teacher (training nothing) so that the student's card gets its agreement with it."""
    out = tmp_path / "repo"
    shutil.copytree(zoo_repo, out)
    for model_dir in out.glob("digits-rocket-resnet8*"):
        shutil.rmtree(model_dir)  # trained, not yet published: the child publishes it
    config = {**load_zoo_config(config_path("digits")), "teacher_first": True}
    config_file = tmp_path / "zoo.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = _export(
        "zoo", "--dataset", "digits", "--out", str(out), "--config", str(config_file),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--resume", "--no-report", "--only", "rocket-resnet8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[digits-teacher-resnet20] already published" in proc.stdout
    rocket = read_manifest(out / "digits-rocket-resnet8")
    assert rocket.metrics.teacher_agreement is not None


def _share(lanes: int) -> int:
    import os

    return max(1, (os.cpu_count() or 1) // lanes)


def test_prerequisites_of_zoo_entries() -> None:
    from export.zoo import prerequisites

    config = load_zoo_config(config_path("cifar10"))
    entries = {e["name"]: e for e in config["students"]}
    teacher = config["teacher"]["name"]
    assert config["teacher_first"] is True  # the method table's students before the rest
    assert prerequisites(config["teacher"], config) == []
    assert prerequisites(entries["baseline-wrn-16-1"], config) == [teacher]
    assert prerequisites(entries["kd-wrn-16-1-seed1"], config) == [
        teacher, "kd-wrn-16-1", "baseline-wrn-16-1", "rocket-wrn-16-1", "rocket-kd-wrn-16-1"
    ]  # fmt: skip
    beside = {**config, "teacher_first": False}
    assert prerequisites(entries["baseline-wrn-16-1"], beside) == []
    assert prerequisites(entries["rocket-wrn-16-1"], beside) == []
    assert prerequisites(entries["kd-wrn-16-1"], beside) == [teacher]
    assert prerequisites(entries["baseline-wrn-16-1-seed1"], beside) == [
        "baseline-wrn-16-1", "kd-wrn-16-1", "fitnet-wrn-16-1", "mimic-wrn-16-1",
        "rocket-wrn-16-1", "rocket-kd-wrn-16-1",
    ]  # fmt: skip


def _scored(base: Any, name: str, top1: float, version: int = 1) -> Any:
    metrics = base.metrics.model_copy(update={"n": 10_000, "top1": top1})
    return base.model_copy(update={"name": name, "version": version, "metrics": metrics})


SECOND_SEED = {
    "name": "kd-seed1",
    "second_seed_of": "kd",
    "when_within_noise_of": ["alone", "rocket"],
}


@pytest.mark.parametrize(
    ("kd", "alone", "rocket", "needed"),
    [
        (0.900, 0.880, 0.870, False),  # +2.0 and +3.0 points: beyond 2 s.e. (~0.88)
        (0.900, 0.895, 0.870, True),  # +0.5 over alone: within noise, a second seed is due
        (0.900, 0.880, 0.897, True),  # within noise of the second rival
        (0.900, 0.880, None, True),  # a rival without a card yet: cannot tell, so train
        (None, 0.880, 0.870, True),  # no first seed yet
    ],
)
def test_a_second_seed_trains_only_when_its_first_seed_is_within_noise(
    digits_repo: Path, kd: float | None, alone: float, rocket: float | None, needed: bool
) -> None:
    from export.zoo import second_seed_reason

    base = read_manifest(digits_repo / "digits-logreg")
    scores = {"kd": kd, "alone": alone, "rocket": rocket}
    cards = [_scored(base, f"z-{n}", v) for n, v in scores.items() if v is not None]
    run, why = second_seed_reason(SECOND_SEED, cards, lambda n: f"z-{n}")
    assert run is needed, why
    if not needed:
        assert "kd vs alone: +2.00 points" in why and "beyond noise" in why


def test_a_second_seed_reads_the_latest_version_of_its_first_seed(digits_repo: Path) -> None:
    """A retrained first seed (version 2) is what the decision reads."""
    from export.zoo import second_seed_reason

    base = read_manifest(digits_repo / "digits-logreg")
    cards = [
        _scored(base, "z-kd", 0.881, version=1),
        _scored(base, "z-kd", 0.900, version=2),
        _scored(base, "z-alone", 0.880),
        _scored(base, "z-rocket", 0.870),
    ]
    assert second_seed_reason(SECOND_SEED, cards, lambda n: f"z-{n}")[0] is False
    assert second_seed_reason(SECOND_SEED, cards[:1] + cards[2:], lambda n: f"z-{n}")[0] is True


def test_second_seeds_are_due_for_every_comparison_the_method_table_reads() -> None:
    """For each step of the report's method table (alone -> KD, KD -> Rocket, ...) each side's
    second seed is due when the two first seeds are within noise of each other."""
    from export.comparisons import METHOD_STEPS

    config = load_zoo_config(config_path("cifar10"))
    rivals = {
        e["second_seed_of"]: set(e["when_within_noise_of"])
        for e in config["students"]
        if e.get("second_seed_of")
    }
    pairs = {(a, b) for first, named in rivals.items() for a, b in ((first, n) for n in named)}
    wanted = set()
    for low, high in METHOD_STEPS:
        a, b = f"{low}-wrn-16-1", f"{high}-wrn-16-1"
        wanted |= {(a, b), (b, a)}
    assert pairs == wanted


def test_conditional_entries_must_name_zoo_entries(tmp_path: Path) -> None:
    config = load_zoo_config(config_path("cifar10"))
    seeds = [e for e in config["students"] if e.get("second_seed_of")]
    assert {e["second_seed_of"] for e in seeds} == {
        f"{m}-wrn-16-1" for m in ("baseline", "kd", "fitnet", "mimic", "rocket", "rocket-kd")
    }
    bad = dict(config)
    bad["students"] = [*config["students"], {**seeds[0], "name": "x", "second_seed_of": "nope"}]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ZooError, match="names no zoo entry 'nope'"):
        load_zoo_config(path)
