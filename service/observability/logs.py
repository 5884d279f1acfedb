"""The service's logs as text or as one JSON object per line, for its loggers and uvicorn's alike.

``ROCKETSERVE_LOG_FORMAT=json`` is for a log pipeline (Loki, Elasticsearch, Cloud Logging): every
record of the service, of uvicorn and of its access log is one line holding a JSON object with
``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, an access record also with
``client``, ``method``, ``path``, ``http_version`` and ``status``, and a record with an exception
also with ``exception`` (the traceback); ``pid`` tells worker processes apart. ``text`` (the
default) is uvicorn's own format, with the service's records as ``LEVEL logger: message``.
Access records go to stdout and the rest to stderr, as uvicorn has it (uvicorn's side of this is
``service.http.uvicorn_hooks.uvicorn_log_config``); Python's warnings become records too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "uvicorn.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == ACCESS_LOGGER and isinstance(args, tuple) and len(args) == 5:
            client, method, path, http_version, status = args
            entry |= {
                "client": client,
                "method": method,
                "path": path,
                "http_version": http_version,
                "status": status,
            }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_service_logging(log_format: str, level: str) -> None:
    """Send the service's records (and Python's warnings) to stderr in ``log_format`` at
    ``level``, unless the process has root handlers already (uvicorn's ``log_config`` gave
    them)."""
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
        )
        root.addHandler(handler)
    root.setLevel(level.upper())
