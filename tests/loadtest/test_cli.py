"""Every ``python -m loadtest.<command>`` answers a user's mistake with one error line, exit 2."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from loadtest.cli import (
    describe,
    http_url,
    non_negative_float,
    positive_float,
    positive_int,
    run_cli,
)
from loadtest.server import free_port
from tests.support.cli import run_module

pytestmark = pytest.mark.timeout(120)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a refused command, after checking there is no traceback."""
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if "error:" in x]
    return line


@pytest.fixture
def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def test_fuzz_refuses_what_it_cannot_run(tmp_path: Path, dead_url: str) -> None:
    missing = str(tmp_path / "missing")
    assert "--repository" in error_line(run_module("loadtest.fuzz", "--repository", missing))
    assert "not a URL" in error_line(run_module("loadtest.fuzz", "--url", "notaurl"))
    refused = error_line(run_module("loadtest.fuzz", "--url", dead_url, "--requests", "1"))
    assert refused.startswith("error: GET ") and "/models" in refused
    for option, value in [
        ("--requests", "0"),
        ("--requests", "-5"),
        ("--pause-ms", "-5"),
        ("--pause-ms", "nan"),
    ]:
        line = error_line(run_module("loadtest.fuzz", "--url", dead_url, option, value))
        assert option in line and repr(value) in line


def test_a_service_that_does_not_start_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_module(
        "loadtest.locust_run", "--model-repository", str(empty), "--out", str(tmp_path / "out")
    )
    line = error_line(proc)
    assert "service exited" in line and "nothing to serve" in line and "service.log" in line
    missing = str(tmp_path / "missing")
    assert "not a folder" in error_line(
        run_module("loadtest.locust_run", "--model-repository", missing)
    )


def test_bench_refuses_points_without_time(dead_url: str) -> None:
    for option, value in [("--duration", "0"), ("--duration", "inf"), ("--warmup", "-1")]:
        line = error_line(run_module("loadtest.bench", "--url", dead_url, option, value))
        assert option in line


def test_hotpath_ab_checks_everything_before_a_round(tmp_path: Path) -> None:
    jpeg = tmp_path / "x.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff")
    missing = str(tmp_path / "missing")
    common = ("--image", str(jpeg), "--model-repository", missing)
    line = error_line(run_module("loadtest.hotpath_ab", *common))
    assert "model repository folder does not exist" in line
    # The variants are checked before the repository is read, so before any round.
    line = error_line(run_module("loadtest.hotpath_ab", *common, "--variants", "nosuch"))
    assert "unknown variant 'nosuch'" in line
    assert "--rounds" in error_line(run_module("loadtest.hotpath_ab", *common, "--rounds", "0"))
    line = error_line(
        run_module(
            "loadtest.hotpath_ab",
            "--image",
            str(tmp_path / "nope.jpg"),
            "--variants",
            "current",
            "--model-repository",
            missing,
        )
    )
    assert line == f"error: {tmp_path / 'nope.jpg'}: No such file or directory"


def test_router_cost_times_any_positive_count(tmp_path: Path, digits_repo: Path) -> None:
    missing = str(tmp_path / "missing")
    line = error_line(run_module("loadtest.router_cost", "--model-repository", missing))
    assert "model repository folder does not exist" in line
    for count in ("0", "-3"):
        assert "--requests" in error_line(run_module("loadtest.router_cost", "--requests", count))
    proc = run_module(
        "loadtest.router_cost", "--model-repository", str(digits_repo), "--requests", "1"
    )
    assert proc.returncode == 0, proc.stderr
    timings = [float(line.split()[-1]) for line in proc.stdout.splitlines()[-4:]]
    assert all(t > 0 for t in timings), proc.stdout


def test_served_vs_raw_refuses_zero_clients() -> None:
    line = error_line(run_module("loadtest.served_vs_raw", "--concurrency", "1", "0"))
    assert "--concurrency" in line


def test_make_data_refuses_a_negative_count(tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = error_line(run_module("loadtest.make_data", "--per-class", "-1", "--out", str(out)))
    assert "--per-class" in line and not out.exists()


def test_ramp_refuses_an_endless_step(dead_url: str) -> None:
    proc = run_module(
        "loadtest.ramp", "--url", dead_url, "--latency-budget-ms", "5", "--step-seconds", "inf"
    )
    assert "--step-seconds" in error_line(proc)


def test_table_refuses_a_csv_that_is_not_a_bench_csv(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    for text in ("a,b\n", "a,b\n1,2\n"):
        other.write_text(text, encoding="utf-8")
        line = error_line(run_module("loadtest.table", str(other)))
        assert "not a bench CSV" in line and "model" in line


def test_argument_types_take_finite_numbers_in_range() -> None:
    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    assert non_negative_float("0") == 0.0
    assert http_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    bad = [
        (positive_int, "0"),
        (positive_int, "1.5"),
        (positive_float, "0"),
        (positive_float, "inf"),
        (non_negative_float, "-0.1"),
        (non_negative_float, "nan"),
        (http_url, "127.0.0.1:8000"),
        (http_url, "http://"),
        (http_url, "http://h:port"),
    ]
    for parse, text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_run_cli_says_user_errors_and_keeps_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    def bad_input(argv: list[str] | None) -> int:
        raise ValueError("line one\nline two")

    def bug(argv: list[str] | None) -> int:
        raise KeyError("a programming error")

    assert run_cli(bad_input, []) == 2
    assert capsys.readouterr().err == "error: line one; line two\n"
    with pytest.raises(KeyError):
        run_cli(bug, [])
    assert describe(FileNotFoundError(2, "No such file or directory", "x.jpg")) == (
        "x.jpg: No such file or directory"
    )
