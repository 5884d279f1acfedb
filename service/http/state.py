"""ServiceState: what one app instance's routes share (settings, metrics, the loaded models)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from service.errors import Unavailable
from service.observability.metrics import ServiceMetrics
from service.repository.control import ModelControl
from service.repository.registry import ModelRegistry
from service.settings import Settings


@dataclass
class ServiceState:
    """What the routes need, owned by one app instance."""

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry | None = None
    control: ModelControl | None = None  # loads and unloads, in step with the other workers
    predicting: int = 0  # /predict requests past the AdmissionGate right now
    draining: bool = False  # SIGTERM received: not ready, finishing what was accepted


def state_of(request: Request) -> ServiceState:
    """The ServiceState of the app that received ``request``."""
    state: ServiceState = request.app.state.service
    return state


def registry_of(request: Request) -> ModelRegistry:
    """The loaded models of the app that received ``request``; 503 before they are loaded."""
    registry = state_of(request).registry
    if registry is None:
        raise Unavailable("models are not loaded yet", code="not_ready")
    return registry


def control_of(state: ServiceState) -> ModelControl:
    """Where loads and unloads go (every protocol's); 503 before the models are loaded."""
    if state.control is None:
        raise Unavailable("models are not loaded yet", code="not_ready")
    return state.control
