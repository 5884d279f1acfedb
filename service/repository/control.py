"""Explicit model control across worker processes: a load or unload is answered once every
worker process serves it.

With several worker processes, a request to ``/v2/repository/models/{name}/load`` (or gRPC's
``RepositoryModelLoad``) reaches one of them. That worker applies it to its own registry first
(new versions loaded and warmed beside the serving ones, then switched to: nothing is lost), and
only if that succeeds records the change in a folder the workers share: ``models.json`` says
which models every worker should serve and, for each, the generation that last loaded it (so a
reload, which keeps the name, is still a change), under a generation number that each change
bumps; a file lock orders the changes. Every worker looks at that file every ``FOLLOW_S``,
brings its registry to it and writes ``workers/<pid>.json``: the generation it has applied and
what failed. The asked worker answers once every other live worker has applied the change, or
says which could not and why, so that from the answer on a request to any worker finds the
change. A worker that starts later (uvicorn replaces one that died) applies the file before it
serves.

With one process there is no folder, and a change is applied to the one registry directly.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import BadRequest, NotFound, ServiceError, Unavailable
from service.repository.registry import ModelRegistry

log = logging.getLogger(__name__)

ENV = "ROCKETSERVE_CONTROL_DIR"  # the shared folder, set by ``python -m service`` for workers
TEMP_PREFIX = "rocketserve-control-"
STATE = "models.json"
LOCK = "models.lock"
WORKERS = "workers"
FOLLOW_S = 0.05  # how often a worker reads models.json
PEER_TIMEOUT_S = 300.0  # the longest an asked worker waits for the others to apply a change


@dataclass(frozen=True)
class Desired:
    """What every worker should serve: model name -> the generation that last loaded it."""

    generation: int
    models: dict[str, int]


@dataclass(frozen=True)
class Peer:
    """Another worker process, as its own file says."""

    ident: str
    pid: int
    generation: int
    failed: dict[str, tuple[int | None, str]]  # model -> (the generation it failed, why)


def share_control_across_workers(workers: int) -> Path | None:
    """Before uvicorn starts: a fresh folder for the workers' model control (one worker: None).

    An operator's ``ROCKETSERVE_CONTROL_DIR`` is used as given, emptied first: a new run starts
    from the repository folder, not from what an earlier run had loaded; otherwise a folder
    under the temporary directory, removed when this process exits.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if workers <= 1:
        return None
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, path, True)
    os.environ[ENV] = str(path)  # inherited by the worker processes uvicorn spawns
    return path


def control_folder() -> Path | None:
    """The shared folder of this run's workers, or None (one process)."""
    path = os.environ.get(ENV)
    return Path(path) if path else None


def read_desired(folder: Path) -> Desired | None:
    """``models.json``, or None before the first change (every worker serves what it loaded)."""
    try:
        raw = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        return None
    return Desired(int(raw["generation"]), {str(k): int(v) for k, v in raw["models"].items()})


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` at once: a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The folder's lock: one change is recorded at a time, across processes."""
    with open(folder / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class ModelControl:
    """Loads and unloads for one worker's registry, kept in step with the other workers'."""

    def __init__(
        self,
        registry: ModelRegistry,
        folder: Path | None,
        ident: str | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        """``ident``: this worker's name in the folder (its pid; a test running several
        registries in one process names them ``<pid>.<n>``)."""
        self.registry, self.folder, self.peer_timeout_s = registry, folder, peer_timeout_s
        self.ident = ident or str(os.getpid())
        self.applied = 0  # the generation of models.json this worker serves
        self.loaded_at: dict[str, int] = dict.fromkeys(registry.models, 0)
        self.failed: dict[str, tuple[int | None, str]] = {}
        self._changing = asyncio.Lock()  # one change at a time in this worker, asked or followed

    # -- asked: the repository API ----------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load or reload ``name`` here, then in every other worker."""
        if self.folder is None:
            await self.registry.load_model(name)
            return
        async with self._changing:
            await self._follow()  # the latest first: what is recorded builds on it
            await self.registry.load_model(name)  # raises, with nothing recorded, if it fails
            generation = await asyncio.to_thread(self._record, name, True)
            self.loaded_at[name] = generation
            self.failed.pop(name, None)
            await self._follow()
        await self._wait_for_peers(name, generation, "load")

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` here, then in every other worker; 404 if it is not served."""
        async with self._changing:
            if self.folder is not None:
                await self._follow()
            if name not in self.registry.models:
                raise NotFound(f"model {name!r} is not loaded", code="unknown_model")
            await self.registry.unload_model(name)
            if self.folder is None:
                return
            generation = await asyncio.to_thread(self._record, name, False)
            self.loaded_at.pop(name, None)
            self.failed.pop(name, None)
            await self._follow()
        await self._wait_for_peers(name, generation, "unload")

    def _record(self, name: str, loaded: bool) -> int:
        """Write the change to models.json; its generation."""
        assert self.folder is not None
        with _locked(self.folder):
            desired = read_desired(self.folder)
            # Before the first change every worker serves what it loaded at start: this one's.
            models = dict(desired.models) if desired else dict(self.loaded_at)
            generation = (desired.generation if desired else 0) + 1
            if loaded:
                models[name] = generation
            else:
                models.pop(name, None)
            _write_json(self.folder / STATE, {"generation": generation, "models": models})
        return generation

    async def _wait_for_peers(self, name: str, generation: int, verb: str) -> None:
        """Until every other live worker has applied ``generation``; raises naming a worker that
        could not apply it (or has not, within ``peer_timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.peer_timeout_s
        while True:
            peers = await asyncio.to_thread(self.peers)
            behind = [p for p in peers if p.generation < generation]
            for peer in peers:
                failed = peer.failed.get(name)
                if peer.generation >= generation and failed and failed[0] == generation:
                    raise BadRequest(
                        f"{verb} of model {name!r}: done in the worker process that answers, "
                        f"but worker process {peer.pid} could not: {failed[1]} (it serves what "
                        "it served before; try again once the cause is fixed)",
                        code="load_failed",
                    )
            if not behind:
                return
            if loop.time() >= deadline:
                pids = ", ".join(str(p.pid) for p in behind)
                raise Unavailable(
                    f"{verb} of model {name!r}: done in the worker process that answers, but "
                    f"worker process(es) {pids} have not applied it after "
                    f"{self.peer_timeout_s:g} s; they apply it when they can",
                    code="not_ready",
                )
            await asyncio.sleep(FOLLOW_S)

    def peers(self) -> list[Peer]:
        """The other live workers' files (a dead worker's is removed)."""
        assert self.folder is not None
        found = []
        for path in sorted((self.folder / WORKERS).glob("*.json")):
            if path.stem == self.ident:
                continue
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):  # being replaced, or removed: the next look reads it
                continue
            pid = int(raw["pid"])
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            failed = {k: (v[0], str(v[1])) for k, v in raw.get("failed", {}).items()}
            found.append(Peer(path.stem, pid, int(raw["generation"]), failed))
        return found

    # -- followed: what the others asked -----------------------------------------------------

    async def join(self) -> None:
        """At start, before serving: apply models.json if another worker changed anything, and
        say so in this worker's file. A model loaded at start that the file says was loaded
        since is taken as loaded then (this worker read the same folder, later)."""
        if self.folder is None:
            return
        (self.folder / WORKERS).mkdir(parents=True, exist_ok=True)
        desired = await asyncio.to_thread(read_desired, self.folder)
        if desired is not None:
            for name in self.loaded_at:
                if name in desired.models:
                    self.loaded_at[name] = desired.models[name]
        async with self._changing:
            await self._follow()
            await asyncio.to_thread(self._report)

    async def follow(self) -> None:
        """Apply what the other workers change, until cancelled."""
        if self.folder is None:
            return
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self.follow_once()
            except Exception:  # the follower must outlive any one fault; the next look retries
                log.exception("model control: models.json could not be applied")

    async def follow_once(self) -> None:
        """Apply models.json now, if it changed since the last look."""
        async with self._changing:
            await self._follow()

    async def _follow(self) -> None:
        """Bring the registry to models.json, if it changed; then report. The file is read
        each time (a few hundred bytes): its inode, time and size could all look unchanged
        after two quick rewrites, its generation cannot."""
        desired = await asyncio.to_thread(read_desired, self.folder)  # type: ignore[arg-type]
        if desired is None or desired.generation <= self.applied:
            return
        for name in sorted(set(self.loaded_at) | set(desired.models)):
            want, have = desired.models.get(name), self.loaded_at.get(name)
            if want == have or (name in self.failed and self.failed[name][0] == want):
                continue  # served as asked, or tried and failed here (the next change retries)
            try:
                if want is None:
                    if name in self.registry.models:
                        await self.registry.unload_model(name)
                    self.loaded_at.pop(name, None)
                else:
                    await self.registry.load_model(name)
                    self.loaded_at[name] = want
                self.failed.pop(name, None)
            except ServiceError as exc:
                self.failed[name] = (want, exc.message)
                log.error("model control: model %s: %s", name, exc.message)
            except Exception as exc:  # one model's fault must not stop the rest
                self.failed[name] = (want, f"{type(exc).__name__}: {exc}")
                log.exception("model control: model %s could not be applied", name)
        self.applied = desired.generation
        await asyncio.to_thread(self._report)

    def _report(self) -> None:
        """This worker's file: the generation it serves and what failed here."""
        assert self.folder is not None
        _write_json(
            self.folder / WORKERS / f"{self.ident}.json",
            {
                "pid": os.getpid(),
                "generation": self.applied,
                "failed": {k: list(v) for k, v in self.failed.items()},
            },
        )

    def leave(self) -> None:
        """At exit: this worker is waited for no more."""
        if self.folder is not None:
            (self.folder / WORKERS / f"{self.ident}.json").unlink(missing_ok=True)
