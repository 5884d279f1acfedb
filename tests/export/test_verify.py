"""`verify` reports every repository defect as one line with a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from export.cli_repo import register
from service.contract.model_card import sha256_file

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CLI:
    """Run one of the repository subcommands in-process: (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="export")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(list(argv))
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def repo(digits_repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(digits_repo, copy)
    return copy


def _edit_manifest(model_dir: Path, edit: Callable[[dict], None]) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _assert_one_line_errors(code: int, err: str, expected: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].endswith("problem(s)")
    problems = lines[:-1]
    assert problems and all(line.startswith("error: ") for line in problems)
    assert any(expected in line for line in problems), err


def test_a_sound_repository_verifies(cli: CLI, repo: Path) -> None:
    code, out, err = cli("verify", str(repo))
    assert (code, err) == (0, "")
    assert "ok (2 models, 3 versions)" in out


def test_corrupted_onnx_file(cli: CLI, repo: Path) -> None:
    model_dir = repo / "digits-slow"
    onnx_file = model_dir / "1" / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(b"\x08\xff\xff" + data[: len(data) // 2])
    # Re-record hash and size so that loading, not the hash, is what catches it.
    size = onnx_file.stat().st_size
    _edit_manifest(model_dir, lambda m: m.update(sha256=sha256_file(onnx_file), size_bytes=size))
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "ONNX Runtime cannot load it")
    assert len(err.strip().splitlines()) == 2


def test_hash_mismatch(cli: CLI, repo: Path) -> None:
    _edit_manifest(repo / "digits-slow", lambda m: m.update(sha256="0" * 64))
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "digits-slow/1/model.onnx: sha256")


def test_missing_version_folder(cli: CLI, repo: Path) -> None:
    shutil.rmtree(repo / "digits-logreg" / "1")
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "digits-logreg/1: version folder is missing")


def test_invalid_manifest(cli: CLI, repo: Path) -> None:
    _edit_manifest(repo / "digits-logreg", lambda m: m["metrics"].update(top1=1.7))
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "invalid manifest: metrics.top1")


def test_manifest_that_is_not_json(cli: CLI, repo: Path) -> None:
    (repo / "digits-logreg" / "manifest.json").write_text("{ not json")
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "not valid JSON")


def test_unrecorded_version_and_missing_manifest(cli: CLI, repo: Path) -> None:
    shutil.copytree(repo / "digits-slow" / "1", repo / "digits-slow" / "2")
    (repo / "orphan" / "1").mkdir(parents=True)
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "version 2 has no record in manifest.json")
    assert "orphan: manifest.json is missing" in err


def test_manifest_that_does_not_describe_the_served_version(cli: CLI, repo: Path) -> None:
    def describe_v1(m: dict) -> None:
        v1 = m["other_versions"][0]
        m["other_versions"] = [{"version": 2, "sha256": m["sha256"], "size_bytes": m["size_bytes"]}]
        m.update(version=1, sha256=v1["sha256"], size_bytes=v1["size_bytes"])

    _edit_manifest(repo / "digits-logreg", describe_v1)
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "manifest describes version 1 but version 2 is the highest")


def test_input_contract_mismatch(cli: CLI, repo: Path) -> None:
    def edit(m: dict) -> None:
        m["input"]["name"] = "pixels"

    _edit_manifest(repo / "digits-slow", edit)
    code, _, err = cli("verify", str(repo))
    _assert_one_line_errors(code, err, "graph input ['input'] != manifest 'pixels'")


def test_missing_repository(cli: CLI, tmp_path: Path) -> None:
    code, _, err = cli("verify", str(tmp_path / "nowhere"))
    _assert_one_line_errors(code, err, "model repository folder does not exist")
