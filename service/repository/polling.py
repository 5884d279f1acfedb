"""Poll mode: watch the repository folder and apply what changed, once the change held still.

Every ``repository_poll_s`` the folder is looked at (each model folder's files with their size
and modification time). A model whose files differ from what was last applied, and look the same
on two looks in a row (nothing is being copied any more), is reloaded; a new model folder is
loaded; a removed one is unloaded. A reload that fails leaves the serving versions untouched (the
failure is logged and counted) and is tried again, ``repository_poll_s`` later and then twice as
long each time (at most ``MAX_RETRY_S``), since a failure may pass (memory, a file still being
written); a version whose file does not match its card's sha256 (a half-copied file) is never
loaded. The folder is first looked at before the service loads it, so a change made while it
loads is applied, not taken for what was loaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from service.contract.model_card import MANIFEST_FILENAME
from service.errors import ServiceError
from service.repository.registry import ModelRegistry

log = logging.getLogger(__name__)

Snapshot = dict[str, tuple[tuple[str, int, int], ...]]


def snapshot(repo: Path) -> Snapshot | None:
    """Each model folder's files (relative path, size, mtime in ns); model folders only. None
    when the folder cannot be listed (a remount, a network file system's hiccup): that says
    nothing about the models, and must not read as every model removed."""
    found: Snapshot = {}
    try:
        entries = sorted(p for p in repo.iterdir() if p.is_dir())
    except OSError:
        return None
    for model_dir in entries:
        if not (model_dir / MANIFEST_FILENAME).exists():
            continue
        files = []
        for root, _, names in os.walk(model_dir):
            for name in names:
                path = Path(root, name)
                try:
                    st = path.stat()
                except OSError:  # removed while we looked: the next look sees it
                    continue
                files.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
        found[model_dir.name] = tuple(sorted(files))
    return found


MAX_RETRY_S = 300.0  # the longest wait before a failed model is tried again


class RepositoryPoller:
    """The task that keeps a registry in step with its repository folder."""

    def __init__(
        self,
        registry: ModelRegistry,
        repo: Path,
        interval_s: float,
        applied: Snapshot | None = None,
    ) -> None:
        """``applied``: the folder as it was when the registry loaded it (taken before loading);
        by default, as it is now."""
        self.registry, self.repo, self.interval_s = registry, repo, interval_s
        self.applied: Snapshot = applied if applied is not None else (snapshot(repo) or {})
        self.retry: dict[str, tuple[float, float]] = {}  # model: (try again at, then wait)

    async def run(self) -> None:
        """Poll until cancelled."""
        last = self.applied
        while True:
            await asyncio.sleep(self.interval_s)
            now = await asyncio.to_thread(snapshot, self.repo)
            if now is None:
                log.warning("poll: %s cannot be listed; serving what is loaded", self.repo)
                continue
            if not now and self.registry.models:
                # Every model gone at once is an unmounted or emptied mount far more often than
                # a wish to serve nothing: not applied (unload models one by one, or restart).
                log.warning("poll: %s lists no model; serving what is loaded", self.repo)
                continue
            if now == last and now != self.applied:
                await self.apply(now)
            last = now

    async def apply(self, now: Snapshot) -> None:
        """Load, reload and unload what differs between the applied state and ``now``; a model
        that fails stays unapplied, to be tried again after its back-off."""
        before, applied = self.applied, dict(now)
        clock = asyncio.get_running_loop().time()
        for name in sorted(set(before) | set(now)):
            if before.get(name) == now.get(name):
                continue
            at, wait = self.retry.get(name, (0.0, self.interval_s))
            if clock < at:  # failed lately: not yet
                _keep(applied, before, name)
                continue
            try:
                if name in now:
                    await self.registry.load_model(name)
                elif name in self.registry.models:
                    await self.registry.unload_model(name)
                self.retry.pop(name, None)
                continue
            except ServiceError as exc:
                log.error("poll: model %s: %s (the serving versions are kept)", name, exc.message)
            except Exception:  # the poller must outlive any one model's fault
                log.exception(
                    "poll: model %s could not be applied (the serving versions are kept)", name
                )
            self.retry[name] = (clock + wait, min(2 * wait, MAX_RETRY_S))
            _keep(applied, before, name)
        self.applied = applied


def _keep(applied: Snapshot, before: Snapshot, name: str) -> None:
    """Leave model ``name`` as it was last applied, so that the next look tries it again."""
    if name in before:
        applied[name] = before[name]
    else:
        applied.pop(name, None)
