"""The served model versions of a repository, by name and version; 'name[:version]' resolved."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
)
from service.errors import NotFound
from service.inference.batcher import DynamicBatcher
from service.inference.session import OnnxModel
from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    """A model version that could not be served, and why (one line)."""

    model: str
    version: int | None
    reason: str

    def line(self) -> str:
        """The one-line error naming the model (and version) and the reason."""
        which = self.model if self.version is None else f"{self.model}:{self.version}"
        return f"model {which} not served: {self.reason}"


@dataclass(eq=False)
class ServedModel:
    """One version of one model: its card, ONNX Runtime session, batcher and live latencies."""

    card: ModelCard
    version: int
    runtime: OnnxModel
    batcher: DynamicBatcher
    request_metrics: ModelRequestMetrics
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    ready: bool = False

    @property
    def name(self) -> str:
        """The model's name."""
        return self.card.name

    def live_latency_ms(self) -> dict[str, float | int | None]:
        """p50/p99 of recent end-to-end request latencies, in milliseconds."""
        recent = np.fromiter(self.latencies, dtype=np.float64)
        if not len(recent):
            return {"requests": 0, "p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(recent, [50, 99]) * 1000.0
        return {"requests": len(recent), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}

    def describe(self) -> dict[str, Any]:
        """Public description of this version for /models."""
        card = self.card
        measured_here = card.version == self.version
        return {
            "version": self.version,
            "ready": self.ready,
            "provider": self.runtime.provider,
            "sha256": next(r.sha256 for r in card.version_records() if r.version == self.version),
            "offline": {
                "measured_on_version": card.version,
                "metrics": card.metrics.model_dump() if measured_here else None,
                "profile": card.profile.model_dump() if measured_here else None,
            },
            "live": self.live_latency_ms(),
        }


class Arrivals:
    """Requests being read or decoded right now (they may still join a batch)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count

    def __enter__(self) -> Arrivals:
        self.count += 1
        return self

    def __exit__(self, *_: object) -> None:
        self.count -= 1


class ModelRegistry:
    """Every served model version of a repository, by name and version."""

    def __init__(
        self,
        models: dict[str, dict[int, ServedModel]],
        default_model: str,
        metrics: ServiceMetrics,
        arrivals: Arrivals | None = None,
    ) -> None:
        if not models:
            raise ModelRepositoryError("the model repository holds no models")
        self.models = models
        self.metrics = metrics
        self.arrivals = arrivals or Arrivals()
        self.default_model = default_model
        self.default = self.resolve(default_model)
        self.failures: list[LoadFailure] = []  # versions skipped at load, with the reason

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: ServiceMetrics,
        in_progress: Callable[[], int] | None = None,
    ) -> ModelRegistry:
        """Read, verify, load and warm every model version of ``settings.model_repository``.

        A version that cannot be served is skipped with a one-line error (``failures``), unless
        ``settings.strict_models``; it is an error only when no version at all can be served.
        ``in_progress`` counts the requests the HTTP server holds (see DynamicBatcher); the HTTP
        layer passes it in, so that nothing here knows which server runs the service.
        """
        from service.repository.loading import load_repository

        arrivals = Arrivals()
        models, failures = load_repository(settings, metrics, arrivals, in_progress)
        default = settings.default_model or next(iter(sorted(models)))
        try:
            registry = cls(models, default, metrics, arrivals)
        except NotFound as exc:
            raise ModelRepositoryError(f"default_model {default!r}: {exc.message}") from None
        registry.failures = failures
        return registry

    def all(self) -> list[ServedModel]:
        """Every served version, by name then version."""
        return [m for name in sorted(self.models) for _, m in sorted(self.models[name].items())]

    def resolve(self, spec: str | None) -> ServedModel:
        """The version named by 'name' (highest version) or 'name:version'; default if None."""
        if spec is None or spec == "":
            return self.default
        name, sep, version = spec.partition(":")
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(
                f"unknown model {name!r}; served models: {', '.join(sorted(self.models))}",
                code="unknown_model",
            )
        if not sep:
            return versions[max(versions)]
        # ASCII digits only ("²" and "٣" are digits to str.isdigit, not to int), and few enough
        # of them that int() takes them (it refuses over 4,300).
        plain = version.isascii() and version.isdecimal() and len(version) <= 18
        if not plain or int(version) not in versions:
            raise NotFound(
                f"model {name!r} has no version {version!r}; versions: "
                f"{', '.join(map(str, sorted(versions)))}",
                code="unknown_version",
            )
        return versions[int(version)]

    @property
    def ready(self) -> bool:
        """True when every model version is loaded, warm and its batcher running."""
        return all(m.ready and m.batcher.running for m in self.all())

    def start(self) -> None:
        """Start every batcher on the running event loop."""
        for model in self.all():
            model.batcher.start()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop every batcher (queued requests are rejected, running batches finish)."""
        for model in self.all():
            model.ready = False
            self.metrics.model_ready.labels(model.name, str(model.version)).set(0)
            await model.batcher.close(grace_s)

    def describe(self, name: str) -> dict[str, Any]:
        """Public description of one model and all its versions for /models/{name}."""
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"unknown model {name!r}", code="unknown_model")
        card = versions[max(versions)].card
        return {
            "name": name,
            "default_version": max(versions),
            "labels": list(card.labels),
            "input": card.input.model_dump(),
            "precision": card.precision,
            "training": {
                "method": card.training.method,
                "architecture": card.training.architecture,
                "teacher": card.training.teacher,
                "dataset": card.training.dataset,
            },
            "params": card.params,
            "macs": card.macs,
            "size_bytes": card.size_bytes,
            "versions": [versions[v].describe() for v in sorted(versions)],
        }
