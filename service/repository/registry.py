"""Load a model repository into served model versions and resolve 'name' / 'name:version'."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    model_dirs,
    model_file,
    read_manifest,
    sha256_file,
    version_dirs,
)
from service.errors import NotFound
from service.inference.batcher import BatchObserver, DynamicBatcher
from service.inference.predictions import softmax
from service.inference.session import OnnxModel, choose_provider
from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)


class _MetricsObserver(BatchObserver):
    """Feeds one model version's batcher events into the app's Prometheus metrics."""

    def __init__(self, metrics: ServiceMetrics, name: str, version: str) -> None:
        self._depth = metrics.queue_depth.labels(name, version)
        self._wait = metrics.queue_wait.labels(name, version)
        self._inference = metrics.inference.labels(name, version)
        self._batch_size = metrics.batch_size.labels(name, version)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch_started(self, queue_waits: list[float]) -> None:
        for wait in queue_waits:
            self._wait.observe(wait)

    def batch_done(self, batch_size: int, inference_s: float) -> None:
        self._batch_size.observe(batch_size)
        self._inference.observe(inference_s)


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

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: ServiceMetrics,
        in_progress: Callable[[], int] | None = None,
    ) -> ModelRegistry:
        """Read, verify, load and warm every model version of ``settings.model_repository``.

        ``in_progress`` counts the requests the HTTP server holds (see DynamicBatcher); the HTTP
        layer passes it in, so that nothing here knows which server runs the service.
        """
        provider = choose_provider(settings.provider)
        log.info("execution provider: %s", provider)
        models: dict[str, dict[int, ServedModel]] = {}
        arrivals = Arrivals()
        for model_dir in model_dirs(settings.model_repository):
            card = read_manifest(model_dir)
            versions = _verified_versions(model_dir, card)
            models[card.name] = {
                v: _serve(card, v, path, provider, settings, metrics, arrivals, in_progress)
                for v, path in versions.items()
            }
        if not models:
            raise ModelRepositoryError(
                f"{settings.model_repository}: no model folders with a manifest.json"
            )
        default = settings.default_model or next(iter(sorted(models)))
        try:
            return cls(models, default, metrics, arrivals)
        except NotFound as exc:
            raise ModelRepositoryError(f"default_model {default!r}: {exc.message}") from None

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


def _verified_versions(model_dir: Path, card: ModelCard) -> dict[int, Path]:
    """Version files vouched for by the card (size and sha256 checked); others are skipped."""
    records = {r.version: r for r in card.version_records()}
    found = version_dirs(model_dir)
    if card.version not in found:
        raise ModelRepositoryError(
            f"{model_dir}: version {card.version} of the manifest is missing"
        )
    verified: dict[int, Path] = {}
    for version in found:
        path = model_file(model_dir, version)
        record = records.get(version)
        if record is None:
            log.warning(
                "%s: version %d has no record in manifest.json; not served", model_dir, version
            )
            continue
        if not path.is_file():
            raise ModelRepositoryError(f"{path}: model file is missing")
        if path.stat().st_size != record.size_bytes or sha256_file(path) != record.sha256:
            raise ModelRepositoryError(f"{path}: size or sha256 differs from manifest.json")
        verified[version] = path
    return verified


def _serve(
    card: ModelCard,
    version: int,
    path: Path,
    provider: str,
    settings: Settings,
    metrics: ServiceMetrics,
    arrivals: Arrivals,
    in_progress: Callable[[], int] | None,
) -> ServedModel:
    """Load one version, warm it up and give it a batcher and its metrics."""
    t0 = time.perf_counter()
    runtime = OnnxModel(
        path, card, provider, settings.intra_op_threads, spinning=settings.intra_op_spinning
    )
    label_version = str(version)

    def infer_probs(batch: np.ndarray) -> np.ndarray:
        return softmax(runtime(batch))

    batcher = DynamicBatcher(
        infer_probs,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        timeout_s=settings.request_timeout_ms / 1000.0,
        batching=settings.batching,
        workers=settings.inference_workers,
        retry_after_s=settings.retry_after_s,
        name=f"{card.name}:{version}",
        observer=_MetricsObserver(metrics, card.name, label_version),
        arrivals=arrivals,
        in_progress=in_progress,
    )
    served = ServedModel(
        card,
        version,
        runtime,
        batcher,
        ModelRequestMetrics(metrics, card.name, label_version),
        latencies=deque(maxlen=settings.latency_window),
    )
    runtime.warm_up(settings.warmup_runs)
    batch1_ms = runtime.batch1_seconds() * 1000.0
    batcher.inline = batch1_ms <= settings.inline_inference_max_ms
    served.ready = True
    labels = (card.name, label_version)
    metrics.model_info.labels(
        *labels,
        card.training.method,
        card.training.architecture,
        card.precision,
        runtime.provider,
    ).set(1)
    metrics.queue_capacity.labels(*labels).set(settings.max_queue_size)
    metrics.queue_depth.labels(*labels).set(0)
    metrics.in_flight.labels(*labels).set(0)
    metrics.model_params.labels(*labels).set(card.params)
    metrics.model_macs.labels(*labels).set(card.macs)
    if card.version == version:
        metrics.model_top1.labels(*labels).set(card.metrics.top1)
    metrics.model_ready.labels(*labels).set(1)
    log.info(
        "loaded %s:%d on %s in %.0f ms (batch 1: %.3f ms%s)", card.name, version,
        runtime.provider, (time.perf_counter() - t0) * 1000, batch1_ms,
        ", lone requests inline" if batcher.inline else "",
    )  # fmt: skip
    return served
