"""`python -m export onnx`: trained artifact to a parity-checked ONNX file and a published card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.__main__ import main
from export.onnx_export import MAX_OPSET
from export.repository import verify_repository
from service.contract.model_card import read_manifest
from tests.support.trained_digits import trained_digits

ROOT = Path(__file__).resolve().parents[2]


def test_onnx_command_exports_checks_parity_and_publishes(tmp_path: Path) -> None:
    d = trained_digits()
    out, repo = tmp_path / "student.onnx", tmp_path / "repo"
    proc = subprocess.run(
        [sys.executable, "-m", "export", "onnx", str(d.artifact), "--out", str(out),
         "--repo", str(repo), "--name", "digits-test-wrn-10-1", "--variants", "int8",
         "--threads", "1", "--profile-runs", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{out}: parity ok: max |logit diff|" in proc.stdout
    assert out.is_file()
    n_models, n_versions, problems = verify_repository(repo)
    assert (n_models, n_versions, problems) == (2, 2, [])
    card = read_manifest(repo / "digits-test-wrn-10-1")
    int8 = read_manifest(repo / "digits-test-wrn-10-1-int8")
    assert card.training.recipe == d.meta.recipe and card.profile.threads == 1
    assert int8.derived_from == card.name and int8.precision == "int8"
    assert abs(int8.metrics.top1 - card.metrics.top1) <= 0.01


def test_onnx_command_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["onnx", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'missing.pt'}: trained artifact not found"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    assert main(["onnx", str(junk)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {junk}: not a readable torch file") and "\n" not in err


def test_onnx_command_fails_on_parity_with_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = trained_digits()
    # ORT and PyTorch fp32 logits differ by ~1e-6 (fused kernels), never within 1e-12.
    out = tmp_path / "m.onnx"
    assert main(["onnx", str(d.artifact), "--out", str(out), "--atol", "1e-12"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: parity FAILED: max |logit diff| ")
    assert "(limit 1e-12)" in err and "of 360 images" in err and "\n" not in err
    assert not out.exists()


def test_an_opset_too_new_for_the_exporter_is_refused_before_exporting(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    d = trained_digits()
    out = tmp_path / "m.onnx"
    assert main(["onnx", str(d.artifact), "--out", str(out), "--opset", "999"]) == 1
    captured = capfd.readouterr()  # no Torch IR dumped on either stream first
    too_new = f"error: opset 999 is too new for torch's exporter: use {MAX_OPSET} or older\n"
    assert captured.err == too_new
    assert captured.out == "" and not out.exists()


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("onnx", ["--profile-runs", "0"], "argument --profile-runs: must be at least 1, got 0"),
        ("onnx", ["--profile-runs", "-5"], "argument --profile-runs: must be at least 1, got -5"),
        ("onnx", ["--threads", "-3"], "argument --threads: must be at least 0, got -3"),
        ("evaluate", ["--profile-runs", "0"], "argument --profile-runs: must be at least 1"),
        ("zoo", ["--profile-runs", "-5"], "argument --profile-runs: must be at least 1, got -5"),
        ("zoo", ["--threads", "-1"], "argument --threads: must be at least 0, got -1"),
    ],
)
def test_profile_counts_are_refused_before_anything_runs(
    command: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = {"onnx": ["x.pt", "--repo", str(tmp_path / "r")], "evaluate": [str(tmp_path)]}
    head = target.get(command, ["--dataset", "digits", "--out", str(tmp_path / "zoo")])
    with pytest.raises(SystemExit) as exc:
        main([command, *head, *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "zoo").exists()
