"""``loadtest.locust_run``: locust's stats CSV read back into the summary the docs quote."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.locust_run import summarize

HEADER = "Type,Name,Request Count,Failure Count,Requests/s,50%,99%\n"


def test_the_summary_gives_the_aggregate_and_the_slowest_kind(tmp_path: Path) -> None:
    stats = tmp_path / "locust_stats.csv"
    stats.write_text(
        HEADER
        + "POST,/predict teacher multipart x4,34,0,1.1,21,40\n"
        + "POST,/predict student json x1,1456,0,50.0,4,12\n"
        + "POST,/predict unused json x2,0,0,0.0,0,0\n"
        + ",Aggregated,5646,0,194.03,5,25\n",
        encoding="utf-8",
    )
    assert summarize(stats) == [
        "requests: 5,646",
        "failures: 0",
        "requests/s: 194.0",
        "p50 ms: 5",
        "p99 ms: 25",
        "slowest kind: POST /predict teacher multipart x4 (34 requests, p50 21 ms)",
    ]


def test_stats_without_an_aggregate_are_refused(tmp_path: Path) -> None:
    stats = tmp_path / "locust_stats.csv"
    stats.write_text(HEADER + "POST,/predict x,1,0,1.0,1,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no Aggregated row"):
        summarize(stats)
