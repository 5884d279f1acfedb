"""The served app as uvicorn's factory builds it in each worker: HTTP, and gRPC when asked for."""

from __future__ import annotations

from fastapi import FastAPI

from service.grpc.endpoint import grpc_endpoint
from service.http.app import create_app
from service.observability.logs import configure_service_logging
from service.settings import Settings


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings come from ROCKETSERVE_* variables."""
    settings = Settings()  # type: ignore[call-arg]  # model_repository comes from the env
    configure_service_logging(settings.log_format, settings.log_level)
    beside = [grpc_endpoint] if settings.grpc_port is not None else []
    return create_app(settings, beside=beside)
