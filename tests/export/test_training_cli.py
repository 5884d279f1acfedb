"""``python -m export train|bench``: flags over YAML, explicit switches, one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from export.__main__ import main
from export.cli_train import register, train_config
from export.training import load_yaml_config, resolve_config

CONFIGS = Path(__file__).resolve().parents[2] / "export" / "configs"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--joint"], True),
        (["--no-joint"], False),
    ],
)
def test_switches_are_real_booleans(argv: list[str], expected: bool | None) -> None:
    config = train_config(_parse(["--method", "rocket", *argv]))
    assert config.get("joint") is expected


def test_every_switch_can_be_turned_off() -> None:
    args = _parse(["--no-gradient-block", "--no-augment", "--no-nesterov", "--no-progress"])
    config = train_config(args)
    assert config["gradient_block"] is False and config["augment"] is False
    assert config["nesterov"] is False and config["progress"] is False


def test_flags_override_the_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("method: kd\nteacher: wrn-16-1\nepochs: 9\nlambda: 0.1\n", encoding="utf-8")
    config = train_config(_parse(["--config", str(path), "--epochs", "2", "--lambda", "0.5"]))
    assert config == {"method": "kd", "teacher": "wrn-16-1", "epochs": 2, "lambda": 0.5}


def test_fitnet_flags() -> None:
    args = _parse(["--method", "fitnet", "--hint-epochs", "2", "--teacher-hint-layer", "1"])
    assert train_config(args) == {"method": "fitnet", "hint_epochs": 2, "teacher_hint_layer": 1}
    assert train_config(_parse(["--method", "fitnet-one-stage"]))["method"] == "fitnet-one-stage"


TRAIN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("zoo-"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = resolve_config(load_yaml_config(path))
    assert cfg["dataset"] in ("digits", "cifar10")


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("method: !!python/object/apply:os.system ['echo hi']\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_yaml_config(path)


def test_train_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "digits-baseline.yaml"), "--epochs", "2"]
    argv += ["--threads", "1", "--no-progress", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["artifact_path"]) == out / "trained.pt" and result["completed"]
    assert (out / "log.jsonl").is_file() and (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "kd"], "error: method kd needs a teacher"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "error: data directory"),
        (["--config", "/nonexistent.yaml"], "error: /nonexistent.yaml: cannot read config"),
        (["--teacher", "/tmp/none.pt", "--method", "kd"], "error: teacher"),
        (["--epochs", "inf"], "error: epochs must be a finite number, got inf"),
        (
            ["--method", "kd", "--teacher", "wrn-10-1", "--teacher-epochs", "inf"],
            "error: teacher_epochs must be a finite number",
        ),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("out_dir: 5", "error: out_dir must be a string, got 5"),
        ("data_dir: [a, b]", "error: data_dir must be a string, got ['a', 'b']"),
        ("cache_dir: 5", "error: cache_dir must be a string, got 5"),
        ("method: kd\nteacher: 5", "error: teacher must be a string, got 5"),
        ("method: rocket\nbooster: 5", "error: booster must be a string, got 5"),
        ("recipe: [sgd]", "error: recipe must be a string"),
        ("epochs: [1", "invalid YAML on line 2: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_bad_yaml_configs_are_one_line_errors(
    text: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a config wrongly accepted would train into ./runs
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    assert main(["train", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_foreign_teacher_file_and_a_data_dir_file_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("epochs: 3\n", encoding="utf-8")
    argv = ["train", "--method", "kd", "--teacher", str(afile), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: teacher: {afile}: not a readable torch file")
    assert err.count("\n") == 1 and "weights_only" not in err
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(afile), "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: data directory {afile} is a file, not a folder")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--batch-size", "-4"], "argument --batch-size: must be at least 1, got -4"),
        (["--threads", "-1"], "argument --threads: must be at least 1, got -1"),
        (["--seconds", "nan"], "argument --seconds: must be a finite number >= 0, got nan"),
    ],
)
def test_bench_refuses_counts_below_one_before_measuring(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--archs", "resnet8", "--seconds", "0", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bad_flag_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--sharing", "top"])
    assert exc.value.code == 2 and "invalid choice: 'top'" in capsys.readouterr().err


def test_bench_prints_img_per_s(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["bench", "--archs", "resnet8", "--seconds", "0", "--batch-size", "8"]
    assert main([*argv, "--precision", "fp32", "bf16", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "machine: cpu" in out and "resnet8" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("resnet8")]
    assert [line[1] for line in lines] == ["fp32", "bf16"]
    assert lines[0][-1] == "1.00x" and lines[1][-1].endswith("x")
    payload = json.loads((tmp_path / "b.json").read_text())
    rows = payload["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["arch"] == "resnet8" and r["images_per_s"] > 0 and r["steps"] >= 3 for r in rows)


def test_bench_takes_any_architecture_of_a_family(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--archs", "shallow-2-8", "--seconds", "0", "--batch-size", "8"]
    assert main(argv) == 0
    assert any(line.startswith("shallow-2-8") for line in capsys.readouterr().out.splitlines())
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--archs", "vgg16"])
    assert exc.value.code == 2 and "'vgg16' is not an architecture" in capsys.readouterr().err


def test_bench_compile_times_each_architecture_again_through_torch_compile(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    compiled: list[str] = []

    def fake_compile(model: torch.nn.Module, **_: object) -> torch.nn.Module:
        compiled.append(type(model).__name__)
        return model  # what runs is the eager model: the plumbing is under test, not inductor

    monkeypatch.setattr(torch, "compile", fake_compile)
    argv = ["bench", "--archs", "resnet8", "--seconds", "0", "--batch-size", "8", "--compile"]
    assert main([*argv, "--json", str(tmp_path / "b.json")]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["compiled"] for r in rows] == [False, True] and len(compiled) == 1
    assert all(r["warmup_s"] >= 0 and r["images_per_s"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "resnet8 fp32 through torch.compile:" in out and "x eager" in out
