"""Load a model repository into served model versions: verify, open, warm, wire to the metrics.

Each version is loaded on its own: a card that does not parse, a file whose size or sha256
differs from its card, a graph whose signature does not match the card, or a session that fails
to run is that version's failure alone, logged as one line and listed in ``/models``; the other
versions are served. ``strict_models`` turns any failure into a start-up error instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.contract.model_card import (
    ModelCard,
    ModelRepositoryError,
    model_dirs,
    model_file,
    read_manifest,
    read_version_card,
    sha256_file,
    version_dirs,
)
from service.inference.batcher import BatchObserver, DynamicBatcher
from service.inference.cores import CoreBudget
from service.inference.layout import open_with_layout, process_cores
from service.inference.session import CUDA, OnnxModel, choose_provider
from service.observability.metrics import Deferred, ModelRequestMetrics, ServiceMetrics
from service.repository.registry import Arrivals, LoadFailure, ServedModel
from service.repository.routing import LatencyWindow
from service.settings import Settings, parse_version_policy

log = logging.getLogger(__name__)

# The batch size a version's time per image is measured at, for the router (one the warm-up ran).
ROUTING_BATCH = 8


class MetricsObserver(BatchObserver, Deferred):
    """Feeds one model version's batcher events into the app's Prometheus metrics (those of
    the statistics, batches by size and the last batch's time, gathered: ``Deferred``)."""

    def __init__(self, metrics: ServiceMetrics, name: str, version: str) -> None:
        Deferred.__init__(self, metrics)
        self._depth = metrics.queue_depth.labels(name, version)
        self._wait = metrics.queue_wait.labels(name, version)
        self._inference = metrics.inference.labels(name, version)
        self._batch_size = metrics.batch_size.labels(name, version)
        self._abandoned = metrics.abandoned
        self._restarts = metrics.inference_restarts.labels(name, version)
        self._last = metrics.last_inference.labels(name, version)
        self._metrics = metrics
        self._by_size: dict[int, tuple[Any, Any]] = {}  # batch size -> (batches, seconds)
        self._sizes: dict[int, list[float]] = {}  # gathered: batch size -> [batches, seconds]
        self._last_batch = 0.0
        self._labels = (name, version)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def batch_started(self, queue_waits: list[float]) -> None:
        for wait in queue_waits:
            self._wait.observe(wait)

    def batch_done(self, batch_size: int, inference_s: float) -> None:
        self._batch_size.observe(batch_size)
        self._inference.observe(inference_s)
        self._last_batch = time.time()
        gathered = self._sizes.get(batch_size)
        if gathered is None:
            gathered = self._sizes[batch_size] = [0.0, 0.0]
        gathered[0] += 1
        gathered[1] += inference_s
        self._gathered()

    def _write(self) -> None:
        sizes, self._sizes = self._sizes, {}
        for size, (batches, seconds) in sizes.items():
            by_size = self._by_size.get(size)
            if by_size is None:
                labels = (*self._labels, str(size))
                by_size = self._by_size[size] = (
                    self._metrics.batches_by_size.labels(*labels),
                    self._metrics.batch_inference_by_size.labels(*labels),
                )
            by_size[0].inc(batches)
            by_size[1].inc(seconds)
        if sizes:
            self._last.set(self._last_batch)

    def abandoned(self, stage: str) -> None:
        self._abandoned.labels(*self._labels, stage).inc()

    def worker_restarted(self) -> None:
        self._restarts.inc()


class ModelLoader:
    """Loads model folders of one repository into served versions, with what every load needs
    (settings, metrics, the execution provider, the request counters the batchers read)."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        arrivals: Arrivals,
        in_progress: Callable[[], int] | None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self.arrivals, self.in_progress = arrivals, in_progress
        self.provider = choose_provider(settings.provider)
        log.info("execution provider: %s", self.provider)
        # One budget for every model this process serves (none on a GPU: it runs the batches).
        self.cores = None if self.provider == CUDA else CoreBudget(process_cores(settings.workers))

    def load_all(
        self, plan: Mapping[str, Sequence[int]] | None = None
    ) -> tuple[dict[str, dict[int, ServedModel]], list[LoadFailure]]:
        """Every version of the repository that can be served, and the failures of the others.

        ``plan``: instead, exactly these models and versions (what the other worker processes
        serve, ``service.repository.control``); what cannot be loaded is a failure, and serving
        nothing is no error (every model may have been unloaded)."""
        models: dict[str, dict[int, ServedModel]] = {}
        failures: list[LoadFailure] = []
        repo = self.settings.model_repository
        dirs: list[tuple[Path, Sequence[int] | None]]
        if plan is None:
            dirs = [(d, None) for d in startup_dirs(self.settings)]
        else:
            dirs = [(repo / name, plan[name]) for name in sorted(plan)]
        for model_dir, only in dirs:
            if only is not None and not model_dir.is_dir():
                failure = LoadFailure(model_dir.name, None, "not in the repository folder")
                log.error("%s", failure.line())
                failures.append(failure)
                continue
            versions, failed = self.load_model(model_dir, only)
            failures += failed
            if versions:
                models[model_dir.name] = versions
        if not models and plan is None:
            if failures:
                raise ModelRepositoryError(
                    f"no model version could be served; {failures[0].line()}"
                )
            raise ModelRepositoryError(
                f"{self.settings.model_repository}: no model folders with a manifest.json"
            )
        return models, failures

    def load_model(
        self, model_dir: Path, only: Sequence[int] | None = None
    ) -> tuple[dict[int, ServedModel], list[LoadFailure]]:
        """The servable versions of one model folder (loaded and warm, batchers not started),
        and the failures of the others; ``only``: exactly these versions, not the model's
        version policy (each one missing or failing is a failure)."""
        versions: dict[int, ServedModel] = {}
        failures: list[LoadFailure] = []

        def failed(model: str, version: int | None, reason: str) -> None:
            failure = LoadFailure(model, version, reason)
            # strict_models ends a load at start-up; versions asked for by the other workers
            # (``only``) are served as they can be, and what cannot is reported
            if self.settings.strict_models and only is None:
                raise ModelRepositoryError(failure.line())
            log.error("%s", failure.line())
            failures.append(failure)
            label = "" if version is None else str(version)
            self.metrics.load_failures.labels(model, label).inc()
            if version is not None:
                self.metrics.model_ready.labels(model, label).set(0)

        try:
            card = read_manifest(model_dir)
            files = verified_versions(model_dir, card)
        except ModelRepositoryError as exc:
            failed(model_dir.name, None, str(exc))
            return versions, failures
        except OSError as exc:  # a folder or file this process may not read, one gone meanwhile
            failed(model_dir.name, None, f"{model_dir}: {type(exc).__name__}: {exc}")
            return versions, failures
        servable: dict[int, tuple[ModelCard, Path]] = {}
        for version, checked in files.items():
            if isinstance(checked, str):  # the version's verification failed: the reason
                failed(card.name, version, checked)
            else:
                servable[version] = checked
        policy = self.settings.policy_for(card.name)
        if only is not None:
            policy = "specific:" + ",".join(str(v) for v in sorted(only))
            for version in sorted(set(only) - set(servable) - set(files)):
                failed(card.name, version, "no such version in the repository folder any more")
        wanted = select_versions(policy, list(servable))
        # 'latest:N' serves the newest N that load: a new version ONNX Runtime refuses does not
        # push an older, working one out of the N.
        spare = (
            sorted(set(servable) - set(wanted), reverse=True) if policy.startswith("latest") else []
        )
        for version in [*sorted(wanted, reverse=True), *spare]:
            if len(versions) >= len(wanted):
                break
            vcard, path = servable[version]
            try:
                versions[version] = _serve(
                    vcard,
                    version,
                    path,
                    self.provider,
                    self.cores,
                    self.settings,
                    self.metrics,
                    self.arrivals,
                    self.in_progress,
                )
            except ModelRepositoryError as exc:
                failed(card.name, version, str(exc))
            except Exception as exc:  # ORT refusing to run a graph it loaded, and the like
                failed(card.name, version, f"{path}: {type(exc).__name__}: {exc}")
        if only is not None and sorted(versions) != sorted(only):
            # The versions the other workers serve, all of them or none: a part would answer
            # with other versions than the rest of the service.
            for version in sorted(versions):
                failed(card.name, version, f"loaded, but versions {sorted(only)} are wanted")
            return {}, failures
        return versions, failures


def startup_dirs(settings: Settings) -> list[Path]:
    """The model folders to load at start-up: every one, or those ``startup_models`` names
    (explicit model control); a name the repository lacks is an error."""
    dirs = model_dirs(settings.model_repository)
    names = settings.startup_model_names
    if names is None:
        return dirs
    missing = sorted(names - {d.name for d in dirs})
    if missing:
        raise ModelRepositoryError(
            f"ROCKETSERVE_STARTUP_MODELS names {', '.join(map(repr, missing))}, which "
            f"{settings.model_repository} lacks (it has: "
            f"{', '.join(sorted(d.name for d in dirs)) or 'no model'})"
        )
    return [d for d in dirs if d.name in names]


def verify_repository(settings: Settings) -> list[LoadFailure]:
    """Every failure loading would meet, found without warming or serving anything: cards,
    files and sha256, ONNX Runtime sessions and signatures (for ``--strict``)."""
    provider = choose_provider(settings.provider)
    failures: list[LoadFailure] = []
    for model_dir in startup_dirs(settings):
        try:
            card = read_manifest(model_dir)
            versions = verified_versions(model_dir, card)
        except ModelRepositoryError as exc:
            failures.append(LoadFailure(model_dir.name, None, str(exc)))
            continue
        for version, checked in versions.items():
            if isinstance(checked, str):
                failures.append(LoadFailure(card.name, version, checked))
                continue
            vcard, path = checked
            try:
                OnnxModel(path, vcard, provider, 1)
            except ModelRepositoryError as exc:
                failures.append(LoadFailure(card.name, version, str(exc)))
    return failures


def verified_versions(
    model_dir: Path, card: ModelCard, *, sha256: bool = True
) -> dict[int, tuple[ModelCard, Path] | str]:
    """Each version's card and file, the file checked against the card (size, and ``sha256``
    unless a caller only needs a quick look), or why the version cannot be served.

    A version's card is its own ``<v>/manifest.json`` when it has one, else the model's card when
    that records the version; a version no card vouches for is never served with another
    version's labels or preprocessing.
    """
    records = {r.version: r for r in card.version_records()}
    found = version_dirs(model_dir)
    if card.version not in found:
        raise ModelRepositoryError(
            f"{model_dir}: version {card.version} of the manifest is missing"
        )
    verified: dict[int, tuple[ModelCard, Path] | str] = {}
    for version in found:
        path = model_file(model_dir, version)
        try:
            own = read_version_card(model_dir, version)
        except ModelRepositoryError as exc:
            verified[version] = str(exc)
            continue
        vouching = own if own is not None else card
        record = own.version_records()[0] if own is not None else records.get(version)
        if record is None:
            verified[version] = (
                f"{path}: no card vouches for it (no {version}/manifest.json, and "
                f"manifest.json records no version {version})"
            )
        elif not path.is_file():
            verified[version] = f"{path}: model file is missing"
        elif path.stat().st_size != record.size_bytes or (
            sha256 and sha256_file(path) != record.sha256
        ):
            where = f"{version}/manifest.json" if own is not None else "manifest.json"
            verified[version] = f"{path}: size or sha256 differs from {where}"
        else:
            verified[version] = (vouching, path)
    return verified


def select_versions(policy: str, candidates: list[int]) -> list[int]:
    """The versions a policy serves among those that can be: 'all', 'latest:N', 'specific:..'."""
    kind, numbers = parse_version_policy(policy)
    if kind == "all":
        return sorted(candidates)
    if kind == "latest":
        return sorted(candidates)[-numbers[0] :]
    return sorted(v for v in candidates if v in numbers)


def _serve(
    card: ModelCard,
    version: int,
    path: Path,
    provider: str,
    cores: CoreBudget | None,
    settings: Settings,
    metrics: ServiceMetrics,
    arrivals: Arrivals,
    in_progress: Callable[[], int] | None,
) -> ServedModel:
    """Load one version with its thread layout, warm it up, give it a batcher and its metrics."""
    t0 = time.perf_counter()
    runtime, narrow, layout = open_with_layout(path, card, provider, settings)
    label_version = str(version)

    batcher = DynamicBatcher(
        runtime,  # logits: each protocol turns them into its own answer
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        timeout_s=settings.request_timeout_ms / 1000.0,
        batching=settings.batching,
        workers=layout.inference_workers,
        cores=cores,
        core_weight=layout.intra_op_threads or (cores.cores if cores else 1),
        narrow=narrow,
        retry_after_s=settings.retry_after_s,
        name=f"{card.name}:{version}",
        observer=MetricsObserver(metrics, card.name, label_version),
        arrivals=arrivals,
        in_progress=in_progress,
    )
    served = ServedModel(
        card,
        version,
        runtime,
        batcher,
        ModelRequestMetrics(metrics, card.name, label_version),
        window=LatencyWindow(settings.latency_window),
        layout=layout,
    )
    batch1_ms = runtime.batch1_seconds() * 1000.0  # the session that serves, warm
    batcher.inline = batch1_ms <= settings.inline_inference_max_ms
    served.batch1_ms = batch1_ms
    # What each more input costs the router's prediction: a batch's time per image, batched as
    # queued inputs are (a median of 5 calls, so a first call's cost does not count).
    routing_batch = min(ROUTING_BATCH, settings.max_batch_size)
    served.per_image_ms = runtime.batch_seconds(routing_batch, runs=5) * 1000.0 / routing_batch
    served.batching = settings.batching
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
    # Created at 0 when new, never reset: a version reloaded under load still has requests in
    # flight on its old instance, whose dec() would drive a reset gauge below zero for good.
    metrics.queue_depth.labels(*labels)
    metrics.in_flight.labels(*labels)
    metrics.model_params.labels(*labels).set(card.params)
    metrics.model_macs.labels(*labels).set(card.macs)
    metrics.intra_op_threads.labels(*labels).set(layout.intra_op_threads)
    metrics.inference_workers.labels(*labels).set(layout.inference_workers)
    if card.version == version:
        metrics.model_top1.labels(*labels).set(card.metrics.top1)
        if card.metrics.ece is not None:
            metrics.model_ece.labels(*labels).set(card.metrics.ece)
        if card.metrics.teacher_agreement is not None:
            metrics.offline_agreement.labels(*labels).set(card.metrics.teacher_agreement)
    metrics.model_ready.labels(*labels).set(1)
    log.info(
        "loaded %s:%d on %s in %.0f ms (batch 1: %.3f ms%s; %d intra-op thread(s), %d inference "
        "worker(s): %s)", card.name, version, runtime.provider,
        (time.perf_counter() - t0) * 1000, batch1_ms,
        ", lone requests inline" if batcher.inline else "", layout.intra_op_threads,
        layout.inference_workers, layout.reason,
    )  # fmt: skip
    return served
