"""Logs as JSON lines for a log pipeline: every record of the service and of uvicorn, parsed."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest

from service.observability.logs import JsonFormatter
from tests.support.server import running_service


def _record(name: str, msg: str, args: tuple[object, ...], exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, exc_info)


def test_an_access_record_carries_its_fields_and_an_error_its_traceback() -> None:
    access = '%s - "%s %s HTTP/%s" %d'
    line = JsonFormatter().format(
        _record("uvicorn.access", access, ("127.0.0.1:5", "POST", "/predict?x=1", "1.1", 413))
    )
    entry = json.loads(line)
    assert entry["message"] == '127.0.0.1:5 - "POST /predict?x=1 HTTP/1.1" 413'
    assert entry["level"] == "info" and entry["logger"] == "uvicorn.access"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/predict?x=1", 413)
    assert entry["time"].endswith("Z")
    failed = json.loads(JsonFormatter().format(_record("service", "failed: %s", ("x",), exc=True)))
    assert failed["message"] == "failed: x" and "ValueError: boom" in failed["exception"]
    assert "\n" not in JsonFormatter().format(_record("service", "two\nlines", ()))
    assert failed["pid"] > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_line_the_service_writes_is_a_json_record(digits_repo: Path) -> None:
    """Two worker processes, so that uvicorn's spawned workers are configured too."""
    env = {
        "ROCKETSERVE_LOG_FORMAT": "json",
        "ROCKETSERVE_ACCESS_LOG": "true",
        "ROCKETSERVE_LOG_LEVEL": "info",
        "ROCKETSERVE_WORKERS": "2",
    }
    with running_service(digits_repo, env) as (url, proc):
        assert httpx.get(url + "/healthz").status_code == 200
        bad = httpx.post(
            url + "/predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
    assert proc.stdout is not None
    lines = [line for line in proc.stdout.read().decode().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line: one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert "uvicorn.error" in loggers  # uvicorn's own records (started, shutting down)
    assert any("worker process(es)" in e["message"] for e in entries)  # the command's own
    loads = [e for e in entries if e["logger"].startswith("service.") and "loaded" in e["message"]]
    assert len({e["pid"] for e in loads}) == 2  # each worker loaded the models, and says which
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert {(e["method"], e["path"], e["status"]) for e in access} >= {
        ("GET", "/healthz", 200),
        ("POST", "/predict", 400),
    }
