"""The zoo: smoke-run configs, and a reduced end-to-end run through the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
from math import nan
from pathlib import Path

import pytest
import yaml
from PIL import Image

from export.__main__ import main
from export.training import resolve_config
from export.zoo import ZooOptions, _training_config, run_zoo
from export.zoo_config import ZOO_TEACHER, ZooError, config_path, load_zoo_config
from service.contract.model_card import model_dirs, read_manifest
from tests.support.cli import run_module
from tests.support.onnx_repo import digits_uint8_split
from tests.support.reeval import agreement_by_hand


def _export(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_module("export", *args, timeout=timeout)


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
    # It ran 3 of its config's 8 networks (--only): the report says which 5 are missing.
    assert (zoo_repo / "zoo-config.yaml").read_text() == config_path("digits").read_text()
    assert "- Zoo: `zoo-config.yaml` lists 8 networks; 3 trained, 5 not yet" in main_table
    missing = report.split("## Not trained yet")[1].split("\n## ")[0]
    assert "| digits-baseline-resnet8 | baseline | resnet8 | 15 | - |" in missing
    assert "digits-kd-resnet8" not in missing and missing.count("| digits-") == 5
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
    # a stale card (its hits go with it: a card's hits must add up to its top-1)
    stale = {**before["metrics"], "top1": 0.0, "correct": None}
    tampered = {**before, "metrics": stale, "macs": 1}
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
    assert after["metrics"]["correct"] == before["metrics"]["correct"]  # measured again
    assert after["created_at"] == before["created_at"]
    assert after["profile"]["threads"] == before["profile"]["threads"] == 1
    assert "digits-kd-resnet8: top-1 0.00% ->" in proc.stdout
    assert (zoo_repo / "REPORT.md").is_file()
    assert main(["verify", str(zoo_repo)]) == 0


def test_evaluate_in_rounds_keeps_each_figures_median(
    zoo_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = _export("evaluate", str(zoo_repo), "--profile-runs", "3", "--rounds", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latency round 3 of 3 done" in proc.stdout
    for model_dir in model_dirs(zoo_repo):
        card = read_manifest(model_dir)
        assert card.profile.rounds == 3, card.name
        b1 = card.profile.rows[0].p50_ms
        assert f"{card.name}: p50 b1 {b1:.3f} ms, the median" in proc.stdout
    report = (zoo_repo / "REPORT.md").read_text(encoding="utf-8")
    assert "each figure is the median of 3 interleaved rounds" in report
    assert main(["verify", str(zoo_repo)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(zoo_repo), "--rounds", "2", "--accuracy-only"]) == 1
    assert main(["evaluate", str(zoo_repo), "--rounds", "0"]) == 1
    err = capsys.readouterr().err
    assert "--accuracy-only keeps" in err and "--rounds must be at least 1" in err


def test_resume_keeps_what_is_published_and_retrains_nothing(zoo_repo: Path) -> None:
    before = {d.name: read_manifest(d).created_at for d in model_dirs(zoo_repo)}
    proc = _export(
        "zoo", "--dataset", "digits", "--out", str(zoo_repo),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--only", "kd-resnet8", "rocket-resnet8", "--resume",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("already published") == 3 and "parity" not in proc.stdout
    # each finished run reports what it took in all, not the moments this process spent on it
    assert "[digits-teacher-resnet20] trained: 1 epochs, test top-1 " in proc.stdout
    assert proc.stdout.count(" (h:mm) of training in all (") == 3
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


def test_a_bad_key_in_one_entry_fails_every_zoo_command_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not when the entry's turn comes, hours into the zoo."""
    config = load_zoo_config(config_path("digits"))
    last = config["students"][-1]
    last["learning_rate"] = 0.1
    path, out = tmp_path / "zoo.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    expected = f"error: zoo entry {last['name']}: unknown config key(s): learning_rate\n"
    for command in ("zoo", "zoo-status", "zoo-plan"):
        argv = [command, "--dataset", "digits", "--config", str(path), "--out", str(out)]
        assert main(argv) == 1, command
        assert capsys.readouterr().err == expected, command
    assert not out.exists()


def test_zoo_options_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["zoo", "--dataset", "digits", "--out", str(out), "--only", "nosuch"]) == 1
    assert capsys.readouterr().err == "error: --only names no zoo entry: nosuch\n"
    assert not out.exists()  # neither the folder nor its zoo-config.yaml
    afile = tmp_path / "afile"
    afile.write_text("", encoding="utf-8")
    assert main(["zoo", "--dataset", "digits", "--out", str(afile)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {afile}: is a file, not a folder")
    for argv in (["zoo", "--max-epochs", "nan"], ["zoo", "--max-epochs", "0.5"],
                 ["zoo-plan", "--seconds", "-1"], ["zoo-plan", "--seconds", "nan"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([argv[0], "--dataset", "digits", "--out", str(out), *argv[1:]])
        assert exc.value.code == 2 and f"argument {argv[1]}: must be a finite number" in (
            capsys.readouterr().err
        )
    bad = [ZooOptions(profile_runs=-5), ZooOptions(profile_runs=0), ZooOptions(max_epochs=nan),
           ZooOptions(lanes=0), ZooOptions(max_train_images=0)]  # fmt: skip
    for opts in bad:
        with pytest.raises(ZooError, match="must be"):
            run_zoo("digits", out, opts)
    assert not out.exists()


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
    assert every.count("[digits-teacher-resnet20] trained: ") == 2
    assert {d.name for d in model_dirs(out)} == {d.name for d in model_dirs(zoo_repo)}
    assert (out / "REPORT.md").is_file() and main(["verify", str(out)]) == 0
    # the lanes published from their own processes: the count is the repository's
    assert lines[-1].startswith(f"{len(model_dirs(out))} model versions in {out} (")


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
    _, x_te, _, _ = digits_uint8_split()
    by_hand = agreement_by_hand(out / rocket.name, out / "digits-teacher-resnet20", x_te)
    assert rocket.metrics.teacher_agreement == pytest.approx(by_hand, abs=1e-9)


def _share(lanes: int) -> int:
    import os

    return max(1, (os.cpu_count() or 1) // lanes)


def test_train_only_trains_every_entry_and_a_resumed_zoo_publishes_them_untrained(
    tmp_path: Path,
) -> None:
    """``--train-only`` (an accelerator machine) leaves finished runs and publishes nothing;
    the zoo resumed over the same work folder (the serving machine) exports, measures and
    publishes them, training nothing. A second seed trains without waiting for its first seed's
    card, which only the serving machine makes."""
    config = load_zoo_config(config_path("digits"))
    config["students"].append(
        {**next(e for e in config["students"] if e["name"] == "baseline-resnet8"),
         "name": "baseline-resnet8-seed1", "seed": 1, "second_seed_of": "baseline-resnet8",
         "when_within_noise_of": ["kd-resnet8"]}
    )  # fmt: skip
    config_file = tmp_path / "zoo.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "repo"
    common = [
        "zoo", "--dataset", "digits", "--out", str(out), "--config", str(config_file),
        "--max-epochs", "1", "--max-train-images", "200", "--profile-runs", "3",
        "--only", "kd-resnet8", "baseline-resnet8", "baseline-resnet8-seed1",
    ]  # fmt: skip
    proc = _export(*common, "--train-only", "--lanes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model_dirs(out) == [] and not (out / "REPORT.md").exists()
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("trained in ") and lines[-1].endswith("(--train-only)")
    seed_start = next(i for i, line in enumerate(lines) if ": baseline-resnet8-seed1 (" in line)
    kd_done = lines.index(next(line for line in lines if line.endswith(": kd-resnet8 done")))
    assert seed_start < kd_done  # it did not wait for the entries it is compared with
    work = out / ".work"
    for name in ("teacher-resnet20", "kd-resnet8", "baseline-resnet8", "baseline-resnet8-seed1"):
        assert (work / name / "result.json").is_file(), name
        assert not (work / name / "model.onnx").exists(), name  # not exported there

    trained = {p: p.read_bytes() for p in work.glob("*/trained.pt")}
    assert len(trained) == 4
    proc = _export(*common[:-3], "kd-resnet8", "baseline-resnet8", "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("parity ok") == 3
    assert proc.stdout.count(" (h:mm) of training in all (") == 3
    assert {p: p.read_bytes() for p in work.glob("*/trained.pt")} == trained  # nothing trained
    assert {d.name for d in model_dirs(out)} == {
        "digits-teacher-resnet20", "digits-teacher-resnet20-int8", "digits-kd-resnet8",
        "digits-kd-resnet8-int8", "digits-baseline-resnet8",
    }  # fmt: skip
    with pytest.raises(ZooError, match="cannot go with --train-only"):
        run_zoo("digits", tmp_path / "o", ZooOptions(resume=True, adopt_from=out, train_only=True))
