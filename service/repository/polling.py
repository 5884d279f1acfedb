"""Poll mode: watch the repository folder and apply what changed, once the change held still.

Every ``repository_poll_s`` the folder is looked at (each model folder's files with their size
and modification time). A model whose files differ from what was last applied, and look the same
on two looks in a row (nothing is being copied any more), is reloaded; a new model folder is
loaded; a removed one is unloaded. A reload that fails leaves the serving versions untouched (the
failure is logged and counted), and a version whose file does not match its card's sha256 (a
half-copied file) is never loaded.
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


class RepositoryPoller:
    """The task that keeps a registry in step with its repository folder."""

    def __init__(self, registry: ModelRegistry, repo: Path, interval_s: float) -> None:
        self.registry, self.repo, self.interval_s = registry, repo, interval_s
        self.applied: Snapshot = snapshot(repo) or {}

    async def run(self) -> None:
        """Poll until cancelled."""
        last = self.applied
        while True:
            await asyncio.sleep(self.interval_s)
            now = await asyncio.to_thread(snapshot, self.repo)
            if now is None:
                log.warning("poll: %s cannot be listed; serving what is loaded", self.repo)
                continue
            if now == last and now != self.applied:
                await self.apply(now)
            last = now

    async def apply(self, now: Snapshot) -> None:
        """Load, reload and unload what differs between the applied state and ``now``."""
        before = self.applied
        for name in sorted(set(before) | set(now)):
            if before.get(name) == now.get(name):
                continue
            try:
                if name in now:
                    await self.registry.load_model(name)
                elif name in self.registry.models:
                    await self.registry.unload_model(name)
            except ServiceError as exc:
                log.error("poll: model %s: %s (the serving versions are kept)", name, exc.message)
            except Exception:  # the poller must outlive any one model's fault
                log.exception(
                    "poll: model %s could not be applied (the serving versions are kept)", name
                )
        self.applied = now
