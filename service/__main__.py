"""``python -m service --model-repository DIR [--host] [--port] [--workers]``: run the service."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import socket
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    read_manifest,
)
from service.http.uvicorn_hooks import arrival_protocol, uvicorn_log_config
from service.inference.processes import choose_processes
from service.observability.logs import JsonFormatter, configure_service_logging
from service.observability.multiprocess import share_metrics_across_workers
from service.repository.control import share_control_across_workers
from service.repository.loading import (
    select_versions,
    startup_dirs,
    verified_versions,
    verify_repository,
)
from service.repository.registry import LoadFailure
from service.settings import ENV_PREFIX, Settings

log = logging.getLogger("service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; each overrides its ROCKETSERVE_* variable."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve a model repository over HTTP. Every setting can also be given as a "
        f"{ENV_PREFIX}<NAME> environment variable (see docs/settings.md).",
    )
    parser.add_argument("--model-repository", help="model repository folder")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument(
        "--grpc-port", type=int, help="TCP port of the gRPC endpoint (default: none; Triton's 8001)"
    )
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes: auto (default: one per core for light models, else 1) or 1-64",
    )
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument(
        "--intra-op-threads",
        metavar="N|auto",
        help="ONNX Runtime threads per session: auto (default) or 0-256",
    )
    parser.add_argument(
        "--inference-workers",
        metavar="N|auto",
        help="batches run at once per model version: auto (default) or 1-16",
    )
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--strict",
        action="store_const",
        const="true",
        dest="strict_models",
        help="exit with status 2 if any model version cannot be loaded (default: skip it)",
    )
    return parser.parse_args(argv)


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if not where:  # a check across several settings names them in its message
        return f"invalid settings: {message}"
    return f"invalid setting {ENV_PREFIX}{where.upper()}: {message}"


def check_repository(settings: Settings) -> tuple[list[LoadFailure], list[ModelCard]]:
    """What would keep model versions from being served, found before uvicorn starts, and the
    cards that could be read (the choice of worker processes needs them).

    Every card is read and every version file checked against it (its size: the workers hash
    the files as they load them), and each model's version policy applied; with
    ``strict_models`` every version is also opened in ONNX Runtime (a corrupt file or a
    signature that does not match its card is found here). No servable model at all, or a
    ``default_model`` / ``agreement_reference`` naming none that is served, is an error either
    way; otherwise the service itself skips what it cannot load.
    """
    failures = verify_repository(settings) if settings.strict_models else []
    broken = {(f.model, f.version) for f in failures}
    cards, servable = [], set()
    for model_dir in startup_dirs(settings):
        try:
            card = read_manifest(model_dir)
            # sizes only: every worker hashes the files as it loads them; this is a quick look
            versions = verified_versions(model_dir, card, sha256=False)
        except (ModelRepositoryError, OSError) as exc:
            if not settings.strict_models:  # verify_repository reported it already
                failures.append(LoadFailure(model_dir.name, None, str(exc)))
            continue
        cards.append(card)
        good = []
        for version, checked in versions.items():
            if isinstance(checked, str):
                if not settings.strict_models:
                    failures.append(LoadFailure(card.name, version, checked))
            elif (card.name, version) not in broken:
                good.append(version)
        policy = settings.policy_for(card.name)
        if select_versions(policy, good):
            servable.add(card.name)
        elif good:
            reason = f"version policy {policy!r} selects none of its versions {sorted(good)}"
            failures.append(LoadFailure(card.name, None, reason))
    if not servable:
        reason = failures[0].line() if failures else "no model folders with a manifest.json"
        raise ModelRepositoryError(f"{settings.model_repository}: nothing to serve; {reason}")
    for field in ("default_model", "agreement_reference"):
        named = getattr(settings, field)
        if named is not None and named.partition(":")[0] not in servable:
            raise ModelRepositoryError(
                f"{ENV_PREFIX}{field.upper()}={named!r} names no model served from "
                f"{settings.model_repository} (served: {', '.join(sorted(servable))})"
            )
    return failures, cards


def mistyped_settings(environ: dict[str, str]) -> list[str]:
    """``ROCKETSERVE_*`` variables that are no setting but look like one (a typo, ignored
    otherwise): a warning each, with the setting meant. Other tools' variables
    (``ROCKETSERVE_CIFAR10``, say) resemble no setting and are left alone."""
    known = [name.upper() for name in Settings.model_fields]
    warnings = []
    for key in sorted(environ):
        name = key.removeprefix(ENV_PREFIX)
        if key.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            if close:
                warnings.append(
                    f"{key} is not a setting (ignored): did you mean {ENV_PREFIX}{close[0]}?"
                )
    return warnings


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, say), or None: checked before the
    workers start, so that a taken gRPC port is one line, not a failed start-up in each."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _text_say(level: int, message: str) -> None:
    """A start-up warning or error as the one plain line a person reads at a terminal."""
    print(f"{logging.getLevelName(level).lower()}: {message}", file=sys.stderr)


def _json_say(level: int, message: str) -> None:
    """The same as a JSON log record (ROCKETSERVE_LOG_FORMAT=json)."""
    record = log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None)
    print(JsonFormatter().format(record), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Validate settings and repository, then run uvicorn with the app factory."""
    args = parse_args(argv)
    for key, value in vars(args).items():
        if value is not None:
            # The factory (in every worker process) reads its settings from the environment.
            os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)
    # Before the settings are read, so that what is wrong with them is a log line too.
    json_logs = os.environ.get(f"{ENV_PREFIX}LOG_FORMAT", "").strip().lower() == "json"
    say = _json_say if json_logs else _text_say
    for warning in mistyped_settings(dict(os.environ)):
        say(logging.WARNING, warning)
    try:
        settings = Settings()  # type: ignore[call-arg]  # model_repository comes from the env
        failures, cards = check_repository(settings)
        workers, why = choose_processes(settings, cards)
    except ValidationError as exc:
        say(logging.ERROR, _one_line(exc))
        return 2
    except SettingsError as exc:  # a variable pydantic-settings cannot parse (JSON of a dict)
        say(logging.ERROR, f"invalid setting: {exc}")
        return 2
    except ModelRepositoryError as exc:
        say(logging.ERROR, str(exc))
        return 2
    if failures and settings.strict_models:
        say(logging.ERROR, failures[0].line())
        return 2
    if settings.grpc_port is not None:
        taken = (
            "it is the HTTP port too (--port); give gRPC a port of its own"
            if settings.grpc_port == settings.port
            else port_taken(settings.host, settings.grpc_port)
        )
        if taken:
            say(logging.ERROR, f"cannot listen for gRPC on port {settings.grpc_port}: {taken}")
            return 2
    configure_service_logging(settings.log_format, settings.log_level)
    log.info("%d worker process(es): %s", workers, why)
    # Every worker reads the number chosen here (it divides the cores among them).
    os.environ[f"{ENV_PREFIX}WORKERS"] = str(workers)
    # Before the workers start: with several, /metrics merges all their metric files.
    share_metrics_across_workers(workers)
    if settings.model_control_mode == "explicit":  # a load asked of one worker reaches all
        share_control_across_workers(workers)
    uvicorn.run(
        "service.server:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop=settings.event_loop,
        http=arrival_protocol(),  # deadlines count from the first parsed byte, not the route
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format, settings.log_level),
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive_s,
        # SIGTERM: stop accepting, let accepted requests finish, but exit within the grace.
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
