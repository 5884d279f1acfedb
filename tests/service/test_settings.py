"""Settings: environment variables with one prefix, documented fields, start-up validation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import main, mistyped_settings
from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROCKETSERVE_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("ROCKETSERVE_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("ROCKETSERVE_BATCHING", "false")
    monkeypatch.setenv("ROCKETSERVE_PROVIDER", "cpu")
    s = Settings()  # type: ignore[call-arg]
    assert (s.model_repository, s.max_batch_size, s.batching, s.provider) == (
        tmp_path,
        64,
        False,
        "cpu",
    )


def test_every_setting_is_documented_in_code_and_docs() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`{ENV_PREFIX}{name.upper()}`" in doc, f"{name} missing from docs/settings.md"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch_size": 4, "max_inputs_per_request": 8}, "must not exceed max_batch_size"),
        ({"max_queue_size": 4, "max_inputs_per_request": 8, "batching": False}, "at least"),
        ({"max_batch_size": 0}, "greater than or equal to 1"),
        ({"provider": "tpu"}, "'auto', 'cpu' or 'cuda'"),
        ({"unknown_knob": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_fail_at_start_up(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(model_repository=tmp_path, **overrides)  # type: ignore[arg-type]


def test_thread_settings_are_auto_by_default_and_explicit_counts_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = Settings(model_repository=tmp_path)
    assert (s.intra_op_threads, s.inference_workers) == ("auto", "auto")
    monkeypatch.setenv("ROCKETSERVE_INTRA_OP_THREADS", "0")
    monkeypatch.setenv("ROCKETSERVE_INFERENCE_WORKERS", " 4 ")
    s = Settings(model_repository=tmp_path)
    assert (s.intra_op_threads, s.inference_workers) == (0, 4)
    monkeypatch.setenv("ROCKETSERVE_INTRA_OP_THREADS", "AUTO")
    assert Settings(model_repository=tmp_path).intra_op_threads == "auto"
    for bad in ("-1", "257", "2.5", "true", ""):
        monkeypatch.setenv("ROCKETSERVE_INTRA_OP_THREADS", bad)
        with pytest.raises(ValidationError, match="must be 'auto' or an integer from 0 to 256"):
            Settings(model_repository=tmp_path)


def test_batching_off_allows_requests_bigger_than_a_batch(tmp_path: Path) -> None:
    s = Settings(model_repository=tmp_path, batching=False, max_batch_size=1)
    assert s.max_inputs_per_request == 32


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "ROCKETSERVE_MODEL_REPOSITORY: Field required"),
        (["--model-repository", "/does/not/exist"], "folder does not exist"),
        (["--model-repository", ".", "--workers", "0"], "ROCKETSERVE_WORKERS"),
        (["--model-repository", ".", "--port", "70000"], "ROCKETSERVE_PORT"),
        (
            ["--model-repository", ".", "--intra-op-threads", "many"],
            "ROCKETSERVE_INTRA_OP_THREADS: must be 'auto' or an integer from 0 to 256",
        ),
        (["--model-repository", ".", "--inference-workers", "0"], "ROCKETSERVE_INFERENCE_WORKERS"),
    ],
)
def test_cli_errors_are_one_line_with_non_zero_exit(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.usefixtures("clean_env")
def test_cli_reports_a_broken_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    assert main(["--model-repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid JSON" in err


def _repo_copy(digits_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(digits_repo, repo)
    return repo


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("change", "argv", "message"),
    [
        # every model's files gone: the cards read, but nothing could be served
        ("no files", [], "nothing to serve; model digits-logreg:1 "),
        ("", ["--default-model", "nosuch"], "ROCKETSERVE_DEFAULT_MODEL='nosuch' names no model"),
        ("policy", [], "version policy 'specific:5' selects none of its versions"),
        ("policies", [], "invalid setting: "),
    ],
    ids=["files missing", "unknown default", "policy selects nothing", "unparsable JSON"],
)
def test_a_repository_that_would_serve_nothing_is_refused_before_uvicorn(
    capsys: pytest.CaptureFixture[str],
    digits_repo: Path,
    tmp_path: Path,
    change: str,
    argv: list[str],
    message: str,
) -> None:
    """Caught in the parent, one line: each worker would otherwise die with a traceback."""
    repo = _repo_copy(digits_repo, tmp_path)
    if change == "no files":
        for onnx_file in repo.glob("*/*/model.onnx"):
            onnx_file.unlink()
    elif change == "policy":
        os.environ[f"{ENV_PREFIX}VERSION_POLICY"] = "specific:5"
    elif change == "policies":
        os.environ[f"{ENV_PREFIX}MODEL_VERSION_POLICIES"] = "notjson"
    assert main(["--model-repository", str(repo), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_a_mistyped_setting_is_named_with_the_one_meant() -> None:
    environ = {"ROCKETSERVE_MAX_BATCHSIZE": "8", "ROCKETSERVE_CIFAR10": "/data", "HOME": "/root"}
    assert mistyped_settings(environ) == [
        "ROCKETSERVE_MAX_BATCHSIZE is not a setting (ignored): did you mean "
        "ROCKETSERVE_MAX_BATCH_SIZE?"
    ]
    assert mistyped_settings({"ROCKETSERVE_MAX_BATCH_SIZE": "8"}) == []


def test_a_cgroup_cpu_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    from service.settings import cgroup_cpu_limit

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a 1.5-CPU limit: 2 cores' worth of threads
    assert cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("max 100000\n")  # no limit
    assert cgroup_cpu_limit(cpu_max) is None
    cpu_max.write_text("garbage\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("mode", "startup", "message"),
    [
        ("explicit", "digits-slow,nosuch", "ROCKETSERVE_STARTUP_MODELS names 'nosuch', which"),
        ("explicit", " , ", "startup_models names no model"),
        ("poll", "digits-slow", "startup_models 'digits-slow' needs model_control_mode 'explicit'"),
    ],
)
def test_startup_models_name_models_of_the_repository_in_explicit_mode(
    capsys: pytest.CaptureFixture[str], digits_repo: Path, mode: str, startup: str, message: str
) -> None:
    os.environ[f"{ENV_PREFIX}MODEL_CONTROL_MODE"] = mode
    os.environ[f"{ENV_PREFIX}STARTUP_MODELS"] = startup
    assert main(["--model-repository", str(digits_repo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
