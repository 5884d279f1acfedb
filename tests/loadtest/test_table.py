"""The README table printer reads a real bench CSV and keeps every figure it is given."""

from __future__ import annotations

from pathlib import Path

from loadtest.table import main, markdown_rows

RESULTS = Path(__file__).resolve().parents[2] / "loadtest" / "results" / "bench.csv"


def test_rows_follow_the_csv(capsys) -> None:
    assert main([str(RESULTS), "--concurrency", "1,64"]) == 0
    out = capsys.readouterr().out.splitlines()
    body = out[2:]
    assert body, "no rows printed"
    assert all(line.split("|")[3].strip() in {"1", "64"} for line in body)
    first = body[0].split("|")
    assert first[2].strip() == "off"


def test_figures_are_rendered_from_the_row() -> None:
    row = {
        "model": "m", "top1": "0.5", "batching": "on", "concurrency": "8",
        "throughput_rps": "1234.4", "p50_ms": "1.234", "p99_ms": "9.87", "mean_batch": "4.5",
        "raw_images_per_s": "2000", "raw_batch_size": "8", "served_over_raw": "0.6172",
        "server_cpu_ms_per_req": "0.812",
    }  # fmt: skip
    (line,) = markdown_rows([row])
    assert line == "| m (50.0 %) | on | 8 | 1,234 | 1.23 | 9.9 | 4.5 | 2,000 (8) | 61.7 % | 0.81 |"


def test_missing_file_is_one_line_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.csv")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")
