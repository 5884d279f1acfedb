"""The served model versions of a repository, by name and version; 'name[:version]' resolved."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    model_dirs,
    version_dirs,
)
from service.errors import BadRequest, NotFound, Unavailable
from service.inference.batcher import DynamicBatcher
from service.inference.layout import Layout
from service.inference.session import OnnxModel
from service.observability.metrics import ModelRequestMetrics, ServiceMetrics
from service.repository.agreement import AgreementSampler
from service.repository.routing import LatencyWindow, Objective, candidates, choose, routing_note
from service.settings import Settings

if TYPE_CHECKING:
    from service.repository.loading import ModelLoader

log = logging.getLogger(__name__)

# Longest a retired version waits for the requests it accepted before it is stopped anyway.
RETIRE_TIMEOUT_S = 60.0  # at least: a request may wait as long as its timeout


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
    ready: bool = False
    active: int = 0  # requests that resolved this version and are not answered yet
    batch1_ms: float = 0.0  # a batch-1 call measured at load: the router's figure before traffic
    per_image_ms: float = 0.0  # time per image of a batch measured at load (ROUTING_BATCH)
    batching: bool = True  # queued requests are merged into batches (else each runs alone)
    window: LatencyWindow = field(default_factory=LatencyWindow)  # recent end-to-end latencies
    layout: Layout | None = None  # threads and inference workers chosen at load, and why

    @property
    def name(self) -> str:
        """The model's name."""
        return self.card.name

    def live_latency_ms(self) -> dict[str, float | int | None]:
        """p50/p99 of recent end-to-end request latencies, in milliseconds."""
        recent = self.window.samples()
        if not len(recent):
            return {"requests": 0, "p50_ms": None, "p99_ms": None}
        p50, p99 = np.percentile(recent, [50, 99]) * 1000.0
        return {"requests": len(recent), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}

    def routing_figures(self) -> dict[str, Any]:
        """What the router weighs this version by now for a one-input request: its predicted p99
        and where it comes from."""
        [candidate] = candidates([self], None, time.monotonic())
        return {
            "predicted_p99_ms": round(candidate.predicted_p99_ms, 3),
            "prediction": candidate.source,
            "accuracy": candidate.accuracy,
            "per_image_ms": round(self.per_image_ms, 3),
        }

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
                # per-image hits are the offline comparisons' (export/noise.py), not a client's
                "metrics": card.metrics.model_dump(exclude={"correct"}) if measured_here else None,
                "profile": card.profile.model_dump() if measured_here else None,
            },
            "live": self.live_latency_ms(),
            "routing": self.routing_figures(),
            "layout": self.layout.describe() if self.layout else None,
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


def default_by_budget(models: dict[str, dict[int, ServedModel]], budget_ms: float) -> str:
    """The model a request that names none gets: the most accurate whose card's batch-1 p99
    is within ``budget_ms`` (ties: the first by name), else the fastest by its card.

    From the cards, not from live figures, so that the default is the same at every start-up.
    """

    def figures(name: str) -> tuple[float, float]:
        card = models[name][max(models[name])].card
        row = card.profile.row(1)
        p99 = row.p99_ms if row else float("inf")
        return card.metrics.top1, p99

    names = sorted(models)
    within = [n for n in names if figures(n)[1] <= budget_ms]
    if within:
        best = max(figures(n)[0] for n in within)
        return next(n for n in within if figures(n)[0] == best)
    return min(names, key=lambda n: (figures(n)[1], n))


class ModelRegistry:
    """Every served model version of a repository, by name and version."""

    def __init__(
        self,
        models: dict[str, dict[int, ServedModel]],
        default_model: str,
        metrics: ServiceMetrics,
        arrivals: Arrivals | None = None,
        allow_empty: bool = False,
    ) -> None:
        """``allow_empty``: serving no model is allowed (a worker that follows the others,
        which unloaded everything), and so is a default that is not served."""
        if not models and not allow_empty:
            raise ModelRepositoryError("the model repository holds no models")
        self.metrics = metrics
        self.arrivals = arrivals or Arrivals()
        self.default_model = default_model
        # Set when the default was chosen by budget (no default_model setting): it is chosen
        # again from what is served whenever that changes, so unloading it leaves a default.
        self.default_budget_ms: float | None = None
        self.models: dict[str, dict[int, ServedModel]] = {}
        self.default: ServedModel | None = None
        self.failures: list[LoadFailure] = []  # versions skipped at load, with the reason
        self._switch(models)
        if self.default is None and not allow_empty:
            self.resolve(default_model)  # raises NotFound naming what is served
        self.loader: ModelLoader | None = None  # set by load(): what load_model needs
        self._routed: dict[tuple[str, str], Any] = {}  # routed-requests counter children
        self.sampler: AgreementSampler | None = None  # live agreement with a reference model
        self._changing = asyncio.Lock()  # loads and unloads, one at a time
        self.headroom = 1.0  # routing: the share of a latency budget a model may predict

    @classmethod
    def load(
        cls,
        settings: Settings,
        metrics: ServiceMetrics,
        in_progress: Callable[[], int] | None = None,
        plan: Mapping[str, Sequence[int]] | None = None,
    ) -> ModelRegistry:
        """Read, verify, load and warm every model version of ``settings.model_repository``.

        A version that cannot be served is skipped with a one-line error (``failures``), unless
        ``settings.strict_models``; it is an error only when no version at all can be served.
        ``in_progress`` counts the requests the HTTP server holds (see DynamicBatcher); the HTTP
        layer passes it in, so that nothing here knows which server runs the service. ``plan``:
        exactly these models and versions instead, as the other worker processes serve them
        (``service.repository.control``; no model at all is then allowed).
        """
        from service.repository.loading import ModelLoader

        arrivals = Arrivals()
        loader = ModelLoader(settings, metrics, arrivals, in_progress)
        models, failures = loader.load_all(plan)
        default = settings.default_model or (
            default_by_budget(models, settings.default_latency_budget_ms) if models else ""
        )
        try:
            registry = cls(models, default, metrics, arrivals, allow_empty=plan is not None)
        except NotFound as exc:
            raise ModelRepositoryError(f"default_model {default!r}: {exc.message}") from None
        registry.failures = failures
        registry.loader = loader
        if not settings.default_model:
            registry.default_budget_ms = settings.default_latency_budget_ms
        registry.headroom = settings.routing_headroom
        registry.sampler = AgreementSampler(
            metrics, settings.agreement_sample_rate, settings.agreement_reference
        )
        for failure in failures:
            registry._count_versions(failure.model)
        return registry

    def _switch(self, models: dict[str, dict[int, ServedModel]]) -> None:
        """Serve ``models`` from now on: one assignment, so a request sees the old set or the
        new one, never a mix."""
        if self.default_budget_ms is not None and any(models.values()):
            self.default_model = default_by_budget(
                {n: v for n, v in models.items() if v}, self.default_budget_ms
            )
        versions = models.get(self.default_model.partition(":")[0])
        default = None
        if versions:
            _, sep, pinned = self.default_model.partition(":")
            if not sep:
                default = versions[max(versions)]
            elif pinned.isascii() and pinned.isdecimal():
                default = versions.get(int(pinned))
        before = self.models
        self.models, self.default = models, default
        self.newest = {name: v[max(v)] for name, v in models.items() if v}
        for name in set(before) | set(models) | {f.model for f in self.failures}:
            self._count_versions(name)  # an unloaded model's count too: 0 ready

    def _mark_served(self, name: str) -> None:
        """The ready gauge of every version served of ``name``, after a load that failed set
        those of its version numbers to 0."""
        for version, served in self.models.get(name, {}).items():
            self.metrics.model_ready.labels(name, str(version)).set(1 if served.ready else 0)

    @staticmethod
    def _folder_models(repo: Path) -> set[str]:
        """The models of the repository folder; 503 while it cannot be listed (unmounted)."""
        try:
            return {d.name for d in model_dirs(repo)}
        except (ModelRepositoryError, OSError) as exc:
            raise Unavailable(
                f"the model repository cannot be listed: {exc}", code="not_ready"
            ) from None

    def _count_versions(self, name: str) -> None:
        ready = len(self.models.get(name, {}))
        failed = sum(1 for f in self.failures if f.model == name)
        self.metrics.model_versions.labels(name, "ready").set(ready)
        self.metrics.model_versions.labels(name, "failed").set(failed)

    async def load_model(self, name: str, only: Sequence[int] | None = None) -> None:
        """Load (or reload) one model from the repository folder without losing a request.

        The new versions are loaded and warmed beside the serving ones, switched to at once,
        then the old versions finish every request they accepted and are released. A model
        that cannot be loaded leaves the serving versions untouched and says why. ``only``:
        exactly these versions, not the model's version policy.
        """
        async with self._changing:  # one change at a time: each retires what it replaced
            await self._load_model(name, only)

    async def _load_model(self, name: str, only: Sequence[int] | None = None) -> None:
        loader = self.loader
        if loader is None:
            raise Unavailable("this registry was not loaded from a repository", code="not_ready")
        folder = loader.settings.model_repository / name
        if name not in self._folder_models(loader.settings.model_repository):
            raise NotFound(f"no model {name!r} in the repository folder", code="unknown_model")
        try:
            versions, failures = await asyncio.to_thread(loader.load_model, folder, only)
        except ModelRepositoryError as exc:  # strict_models: the first failure ends the load
            self.metrics.model_loads.labels(name, "failed").inc()
            raise BadRequest(
                f"model {name!r} could not be loaded: {exc}", code="load_failed"
            ) from None
        self.failures = [f for f in self.failures if f.model != name] + failures
        self._count_versions(name)
        old = self.models.get(name, {})
        # A version being served that no longer verifies or loads is being rewritten (or broke):
        # switching now would serve another version in its place, so the serving ones stay.
        lost = [f for f in failures if f.version in old and f.version not in versions]
        # A version number served before and now with other labels or preprocessing (one
        # without a card of its own takes the model's card, which a new version rewrote) would
        # change its answers under clients pinned to it: kept as it is served instead.
        lost += [
            LoadFailure(name, v, f"{name}:{v} would change its labels or input (it has no card "
                        f"of its own, and the model's card changed): publish it with its own card")
            for v, served in versions.items()
            if v in old
            and served.card.version != v  # vouched for by another version's card
            and (served.card.labels, served.card.input) != (old[v].card.labels, old[v].card.input)
        ]  # fmt: skip
        if not versions or lost:
            self.metrics.model_loads.labels(name, "failed").inc()
            await self._retire(list(versions.values()))  # loaded beside, never served
            self._mark_served(name)
            first = lost[0] if lost else (failures[0] if failures else None)
            reason = first.reason if first else "no version to serve"
            kept = f"; versions {sorted(old)} are still served" if old else ""
            raise BadRequest(
                f"model {name!r} could not be loaded: {reason}{kept}", code="load_failed"
            )
        for served in versions.values():
            served.batcher.start()
        self._switch({**self.models, name: versions})
        self.metrics.model_loads.labels(name, "loaded").inc()
        log.info("model %s: serving versions %s", name, sorted(versions))
        await self._retire(list(old.values()))

    async def unload_model(self, name: str) -> None:
        """Stop serving a model: new requests get 404; accepted ones still get their answers."""
        async with self._changing:
            await self._unload_model(name)

    async def _unload_model(self, name: str) -> None:
        old = self.models.get(name, {})
        self.failures = [f for f in self.failures if f.model != name]  # nothing of it is tried
        self._switch({k: v for k, v in self.models.items() if k != name})
        self.metrics.model_unloads.labels(name).inc()
        log.info("model %s: unloaded", name)
        await self._retire(list(old.values()))

    async def _retire(self, retired: list[ServedModel]) -> None:
        """Let retired versions finish what they accepted, then stop and release them."""
        for served in retired:
            served.ready = False
        timeout_s = RETIRE_TIMEOUT_S
        if self.loader is not None:  # accepted requests may wait their whole deadline
            timeout_s = max(timeout_s, self.loader.settings.request_timeout_ms / 1000.0 + 1.0)
        deadline = time.monotonic() + timeout_s
        while any(s.active for s in retired) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for served in retired:
            await served.batcher.close()
            current = self.models.get(served.name, {}).get(served.version)
            if current is None:  # not reloaded under the same number: no longer served
                labels = (served.name, str(served.version))
                card = served.card
                self.metrics.model_ready.labels(*labels).set(0)
                self.metrics.model_info.labels(
                    *labels,
                    card.training.method,
                    card.training.architecture,
                    card.precision,
                    served.runtime.provider,
                ).set(0)
                self.metrics.queue_capacity.labels(*labels).set(0)

    def route(self, objective: Objective, inputs: int = 1) -> tuple[ServedModel, dict[str, Any]]:
        """The model version an objective chooses for a request of ``inputs`` inputs, and what
        the answer says about it."""
        newest = [versions[max(versions)] for versions in self.models.values() if versions]
        found = candidates(newest, objective.family, time.monotonic(), max(1, inputs))
        chosen, met = choose(found, objective, self.headroom)
        served: ServedModel = chosen.served
        key = (objective.kind, served.name)
        counter = self._routed.get(key)
        if counter is None:  # labels() costs a lookup under a lock: resolve each child once
            counter = self._routed[key] = self.metrics.routed.labels(*key)
        counter.inc()
        return served, routing_note(chosen, met, objective, len(found), self.headroom)

    def index(self) -> list[dict[str, Any]]:
        """The v2 repository index: every model of the folder, its versions and their state."""
        entries: list[dict[str, Any]] = []
        folders: dict[str, Path] = {}
        if self.loader is not None:
            # unlisted (unmounted): what is served is still served, and listed
            with contextlib.suppress(ModelRepositoryError, OSError):
                folders = {d.name: d for d in model_dirs(self.loader.settings.model_repository)}
        for name in sorted(set(self.models) | set(folders)):
            versions = self.models.get(name)
            if versions:
                entries += [
                    {"name": name, "version": str(v), "state": "READY" if m.ready else "LOADING"}
                    for v, m in sorted(versions.items())
                ]
                continue
            reasons = [f.line() for f in self.failures if f.model == name]
            unavailable = {"state": "UNAVAILABLE", "reason": "; ".join(reasons) or "unloaded"}
            on_disk: list[int] = []
            with contextlib.suppress(OSError):
                on_disk = list(version_dirs(folders[name])) if name in folders else []
            # each version in the folder, as Triton lists them; the model alone without any
            entries += [{"name": name, "version": str(v), **unavailable} for v in on_disk] or [
                {"name": name, **unavailable}
            ]
        return entries

    def all(self) -> list[ServedModel]:
        """Every served version, by name then version."""
        return [m for name in sorted(self.models) for _, m in sorted(self.models[name].items())]

    def resolve(self, spec: str | None) -> ServedModel:
        """The version named by 'name' (highest version) or 'name:version'; default if None."""
        if spec is None or spec == "":
            if self.default is None:
                raise NotFound(
                    f"the default model {self.default_model!r} is not loaded; name a model",
                    code="unknown_model",
                )
            return self.default
        name, sep, version = spec.partition(":")
        versions = self._versions(name)
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

    def _versions(self, name: str) -> dict[int, ServedModel]:
        versions = self.models.get(name)
        if versions is None:
            served = ", ".join(sorted(self.models)) or "none (no model is loaded)"
            raise NotFound(f"unknown model {name!r}; served models: {served}", code="unknown_model")
        return versions

    def versions(self, name: str) -> list[ServedModel]:
        """Every served version of the model ``name``, oldest first; 404 if it is not served."""
        return [served for _, served in sorted(self._versions(name).items())]

    @property
    def ready(self) -> bool:
        """True when at least one model version is served and every one is loaded, warm and its
        batcher running (a replica whose last model was unloaded answers every request 404)."""
        served = self.all()
        return bool(served) and all(m.ready and m.batcher.running for m in served)

    def start(self) -> None:
        """Start every batcher on the running event loop."""
        for model in self.all():
            model.batcher.start()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop every batcher (queued requests are rejected, running batches finish)."""
        if self.sampler is not None:
            await self.sampler.close()
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
