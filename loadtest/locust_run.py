"""``python -m loadtest.locust_run``: locust against a fresh service on a repository, summarised.

Starts ``python -m service`` on 127.0.0.1 (a free port), runs ``loadtest/locustfile.py``
headless (its default scenarios: every model, 1-4 images per request, multipart and JSON), stops
the service, and prints one summary: requests, failures, requests/s, p50 and p99, and the slowest
kind of request. The stats CSV and the summary go to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

from loadtest.cli import CommandError, positive_int, run_cli
from loadtest.machine import load_average, machine_description
from loadtest.server import start_service

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
STATS = "locust_stats.csv"
SUMMARY = "locust-summary.txt"


def summarize(stats_csv: Path) -> list[str]:
    """Lines of the summary of a locust ``*_stats.csv``: the aggregate, then the request kind
    with the highest median (name, count, p50)."""
    with stats_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    total = next((r for r in rows if r["Name"] == "Aggregated"), None)
    if total is None:
        raise ValueError(f"{stats_csv}: no Aggregated row")
    lines = [
        f"requests: {int(total['Request Count']):,}",
        f"failures: {int(total['Failure Count']):,}",
        f"requests/s: {float(total['Requests/s']):.1f}",
        f"p50 ms: {total['50%']}",
        f"p99 ms: {total['99%']}",
    ]
    kinds = [r for r in rows if r["Name"] != "Aggregated" and int(r["Request Count"]) > 0]
    if kinds:
        slow = max(kinds, key=lambda r: (float(r["50%"]), r["Name"]))
        lines.append(
            f"slowest kind: {slow['Type']} {slow['Name']} "
            f"({int(slow['Request Count']):,} requests, p50 {slow['50%']} ms)"
        )
    return lines


def run(repository: Path, out: Path, users: int, spawn_rate: int, seconds: int) -> list[str]:
    """One locust run against a service started on ``repository``; the summary lines."""
    out.mkdir(parents=True, exist_ok=True)
    env = {"ROCKETSERVE_LOG_LEVEL": "warning"}
    with start_service(repository, out / "service.log", env) as service:
        cmd = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s", "--host", service.url,
            "--csv", str(out / "locust"), "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=seconds + 120)  # fmt: skip
    if not (out / STATS).is_file():
        raise CommandError(f"locust wrote no stats (exit {proc.returncode}): {proc.stderr[-2000:]}")
    header = [
        f"machine: {machine_description()}; load average at the end: {load_average()}",
        f"locust -u {users} -r {spawn_rate} -t {seconds}s against python -m service "
        f"--model-repository {repository}",
    ]
    lines = header + summarize(out / STATS)
    (out / SUMMARY).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run it; exit 1 if any request failed."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.locust_run", description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--users", type=positive_int, default=32)
    parser.add_argument("--spawn-rate", type=positive_int, default=8)
    parser.add_argument("--seconds", type=positive_int, default=30)
    parser.add_argument("--out", type=Path, default=Path("locust-out"))
    args = parser.parse_args(argv)
    if not args.model_repository.is_dir():
        parser.error(f"--model-repository {args.model_repository}: not a folder")
    lines = run(args.model_repository, args.out, args.users, args.spawn_rate, args.seconds)
    print("\n".join(lines))
    failures = next(int(line.split(": ")[1].replace(",", "")) for line in lines
                    if line.startswith("failures: "))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
