"""ServiceState: what one app instance's routes share (settings, metrics, the loaded models)."""

from __future__ import annotations

from dataclasses import dataclass

from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.settings import Settings


@dataclass
class ServiceState:
    """What the routes need, owned by one app instance."""

    settings: Settings
    metrics: ServiceMetrics
    registry: ModelRegistry | None = None
    predicting: int = 0  # /predict requests past the AdmissionGate right now
    draining: bool = False  # SIGTERM received: not ready, finishing what was accepted
