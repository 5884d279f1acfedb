"""Explicit model control across worker processes: a load or unload is answered once every
worker process serves it.

With several worker processes, a request to ``/v2/repository/models/{name}/load`` (or gRPC's
``RepositoryModelLoad``) reaches one of them. That worker applies it to its own registry first
(new versions loaded and warmed beside the serving ones, then switched to: nothing is lost), and
only if that succeeds records the change in a folder the workers share: ``models.json`` says
which models every worker should serve, the versions the asked worker loaded (so that every
worker serves those, even once the folder holds newer ones), and the generation that last loaded
each (so a reload is a change too), under a generation number that each change bumps; a file
lock orders the changes. Every worker reads that file every ``FOLLOW_S``, brings its registry to
it and writes ``workers/<pid>.json``: the generation it has applied and what failed. The asked
worker answers once every other live worker has applied the change, or says which could not and
why, so that from the answer on a request to any worker finds the change.

A worker announces itself in ``workers/`` before it loads anything, so that a change asked
meanwhile waits for it, and then loads what ``models.json`` says (not the start-up models: a
worker uvicorn starts in place of one that died serves what the others serve).

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
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import NotFound, ServiceError, Unavailable
from service.observability.multiprocess import process_alive, remove_abandoned_folders
from service.repository.registry import ModelRegistry

log = logging.getLogger(__name__)

ENV = "ROCKETSERVE_CONTROL_DIR"  # the shared folder, set by ``python -m service`` for workers
TEMP_PREFIX = "rocketserve-control-"
STATE = "models.json"
LOCK = "models.lock"
WORKERS = "workers"
FOLLOW_S = 0.05  # how often a worker reads models.json
PEER_TIMEOUT_S = 300.0  # the longest an asked worker waits for the others to apply a change
JOINING = -1  # a worker's generation while it loads its models at start


@dataclass(frozen=True)
class Wanted:
    """One model as every worker should serve it."""

    loaded_at: int  # the generation that last loaded it
    versions: tuple[int, ...]  # the versions the asked worker loaded


@dataclass(frozen=True)
class Desired:
    """What every worker should serve."""

    generation: int
    models: dict[str, Wanted]

    def plan(self) -> dict[str, tuple[int, ...]]:
        """Each model and its versions, as ``ModelRegistry.load`` takes them."""
        return {name: wanted.versions for name, wanted in self.models.items()}


@dataclass(frozen=True)
class Failure:
    """A change this worker could not apply: to which state of the model (the generation that
    loaded it, None to unload), when (the generation of models.json), and why."""

    wanted: int | None
    at: int
    reason: str


@dataclass(frozen=True)
class Peer:
    """Another worker process, as its own file says."""

    ident: str
    pid: int
    generation: int
    failed: dict[str, Failure]


def share_control_across_workers(workers: int) -> Path | None:
    """Before uvicorn starts: a fresh folder for the workers' model control (one worker: None).

    An operator's ``ROCKETSERVE_CONTROL_DIR`` is used as given (one folder per service), with
    what an earlier run left in it removed (``models.json``, its lock and the workers' files,
    nothing else): a new run starts from the repository folder, not from what an earlier run
    had loaded; otherwise a folder under the temporary directory, removed when this process
    exits.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for name in (STATE, LOCK):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / WORKERS, ignore_errors=True)
        return path
    if workers <= 1:
        return None
    remove_abandoned_folders(Path(tempfile.gettempdir()), TEMP_PREFIX)
    path = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, path, True)
    os.environ[ENV] = str(path)  # inherited by the worker processes uvicorn spawns
    return path


def control_folder() -> Path | None:
    """The shared folder of this run's workers, or None (one process)."""
    path = os.environ.get(ENV)
    return Path(path) if path else None


class ControlFileError(Unavailable):
    """models.json cannot be read as this module writes it (edited by hand, or a disk fault)."""


def read_desired(folder: Path) -> Desired | None:
    """``models.json``, or None before the first worker has written it."""
    path = folder / STATE
    try:
        raw = json.loads(path.read_text())
        models = {
            str(name): Wanted(int(m["loaded_at"]), tuple(sorted(int(v) for v in m["versions"])))
            for name, m in raw["models"].items()
        }
        return Desired(int(raw["generation"]), models)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ControlFileError(
            f"the workers' {path} cannot be read ({type(exc).__name__}: {exc}); it is written "
            "by the service only: restart the service to start afresh",
            code="not_ready",
        ) from None


def _write_json(path: Path, value: Any) -> None:
    """Replace ``path`` at once: a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
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


def announce(folder: Path, ident: str | None = None) -> None:
    """Before a worker loads its models: changes asked from now on wait for it."""
    (folder / WORKERS).mkdir(parents=True, exist_ok=True)
    _write_json(
        folder / WORKERS / f"{ident or os.getpid()}.json",
        {"pid": os.getpid(), "generation": JOINING, "failed": {}},
    )


class ModelControl:
    """Loads and unloads for one worker's registry, kept in step with the other workers'."""

    def __init__(
        self,
        registry: ModelRegistry,
        folder: Path | None,
        ident: str | None = None,
        peer_timeout_s: float = PEER_TIMEOUT_S,
        started_from: Desired | None = None,
    ) -> None:
        """``ident``: this worker's name in the folder (its pid; a test running several
        registries in one process names them ``<pid>.<n>``). ``started_from``: the
        models.json the registry was loaded by (its models and versions)."""
        self.registry, self.folder, self.peer_timeout_s = registry, folder, peer_timeout_s
        self.ident = ident or str(os.getpid())
        self.applied = JOINING if folder is not None else 0  # the generation this worker serves
        self.loaded_at: dict[str, int] = dict.fromkeys(registry.models, 0)
        self.failed: dict[str, Failure] = {}
        if started_from is not None:
            for name, wanted in started_from.models.items():
                if sorted(registry.models.get(name, {})) == list(wanted.versions):
                    self.loaded_at[name] = wanted.loaded_at
                else:  # (not or partly loaded: the failure is in the registry's)
                    self.loaded_at.pop(name, None)
                    reason = "; ".join(f.line() for f in registry.failures if f.model == name)
                    at = started_from.generation
                    self.failed[name] = Failure(wanted.loaded_at, at, reason or "not loaded")
        self._changing = asyncio.Lock()  # one change at a time in this worker, asked or followed
        self._files = threading.Lock()  # this worker's file: written, or removed at exit
        self._left = False

    # -- asked: the repository API ----------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load or reload ``name`` here, then in every other worker."""
        if self.folder is None:
            await self.registry.load_model(name)
            return
        async with self._changing:
            await self._follow()  # the latest first: what is recorded builds on it
            await self.registry.load_model(name)  # raises, with nothing recorded, if it fails
            versions = tuple(sorted(self.registry.models[name]))
            generation = await self._record(name, versions)
            self.loaded_at[name] = generation
            self.failed.pop(name, None)
            await self._follow()
        await self._wait_for_peers(name, generation, "load")

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` here, then in every other worker; 404 if no worker serves it."""
        async with self._changing:
            desired = None
            if self.folder is not None:
                await self._follow()
                desired = await asyncio.to_thread(read_desired, self.folder)
            # Served here, or by the others (it failed to load here): the others' copy counts.
            elsewhere = desired is not None and name in desired.models
            if name not in self.registry.models and not elsewhere:
                raise NotFound(f"model {name!r} is not loaded", code="unknown_model")
            if name in self.registry.models:
                await self.registry.unload_model(name)
            if self.folder is None:
                return
            generation = await self._record(name, None)
            self.loaded_at.pop(name, None)
            self.failed.pop(name, None)
            await self._follow()
        await self._wait_for_peers(name, generation, "unload")

    async def _record(self, name: str, versions: tuple[int, ...] | None) -> int:
        """Write the change (``versions`` loaded, or None: unloaded) to models.json; its
        generation. 503 if the folder cannot be written (the change is made in this worker)."""
        try:
            return await asyncio.to_thread(self._write_change, name, versions)
        except ControlFileError:
            self.applied = JOINING  # the next look brings this worker back to the file
            raise
        except OSError as exc:
            self.applied = JOINING
            raise Unavailable(
                f"model {name!r}: changed in the worker process that answers, but the workers' "
                f"shared folder {self.folder} cannot be written ({type(exc).__name__}: {exc}); "
                "the other workers do not know of it",
                code="not_ready",
            ) from None

    def _write_change(self, name: str, versions: tuple[int, ...] | None) -> int:
        assert self.folder is not None
        with _locked(self.folder):
            desired = read_desired(self.folder)
            if desired is not None:
                models = dict(desired.models)
            else:  # before the first change every worker serves what it loaded: this one's
                models = {
                    n: Wanted(0, tuple(sorted(self.registry.models.get(n, {}))))
                    for n in self.loaded_at
                }
            generation = (desired.generation if desired else 0) + 1
            if versions is not None:
                models[name] = Wanted(generation, versions)
            else:
                models.pop(name, None)
            raw = {
                n: {"loaded_at": w.loaded_at, "versions": list(w.versions)}
                for n, w in models.items()
            }
            _write_json(self.folder / STATE, {"generation": generation, "models": raw})
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
                if peer.generation < generation or failed is None:
                    continue
                if (failed.wanted == generation) if verb == "load" else (failed.at >= generation):
                    raise ServiceError(
                        f"{verb} of model {name!r}: done in the worker process that answers and "
                        f"the others, but worker process {peer.pid} could not: {failed.reason} "
                        "(it serves what it served before; try again once the cause is fixed)",
                        code="partially_applied",
                        status=500,
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
        """The other live workers' files (a dead worker's is removed; one that cannot be read
        is skipped: it is being replaced)."""
        assert self.folder is not None
        found = []
        for path in sorted((self.folder / WORKERS).glob("*.json")):
            if path.stem == self.ident:
                continue
            try:
                raw = json.loads(path.read_text())
                pid, generation = int(raw["pid"]), int(raw["generation"])
                failed = {
                    str(k): Failure(None if v[0] is None else int(v[0]), int(v[1]), str(v[2]))
                    for k, v in raw.get("failed", {}).items()
                }
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue
            if not process_alive(pid):  # (a zombie not reaped yet is dead too)
                path.unlink(missing_ok=True)
                continue
            found.append(Peer(path.stem, pid, generation, failed))
        return found

    # -- followed: what the others asked -----------------------------------------------------

    async def join(self) -> None:
        """At start, before serving: the first worker to get here writes what it serves as
        models.json's generation 0 (every later one serves the same); then apply what changed
        in models.json while this worker loaded its models, and say so in its file."""
        if self.folder is None:
            return
        (self.folder / WORKERS).mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._write_first)
        async with self._changing:
            await self._follow(force=True)

    def _write_first(self) -> None:
        assert self.folder is not None
        with _locked(self.folder):
            if read_desired(self.folder) is None:
                models = {
                    name: {"loaded_at": 0, "versions": sorted(versions)}
                    for name, versions in self.registry.models.items()
                }
                _write_json(self.folder / STATE, {"generation": 0, "models": models})

    async def follow(self) -> None:
        """Apply what the other workers change, until cancelled."""
        if self.folder is None:
            return
        said = None  # the last fault logged: one that repeats every look is logged once
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self.follow_once()
                said = None
            except Exception as exc:  # the follower must outlive any fault; the next look retries
                if repr(exc) != said:
                    said = repr(exc)
                    log.exception("model control: models.json could not be applied")

    async def follow_once(self) -> None:
        """Apply models.json now, if it changed since the last look."""
        async with self._changing:
            await self._follow()

    async def _follow(self, force: bool = False) -> None:
        """Bring the registry to models.json, if it changed; then report (``force``: report
        even when nothing changed)."""
        desired = await asyncio.to_thread(read_desired, self.folder)  # type: ignore[arg-type]
        generation = desired.generation if desired is not None else 0
        if generation <= self.applied and not force:
            return
        for name in [n for n in self.failed if desired is None or n not in desired.models]:
            if name not in self.registry.models:  # neither wanted nor served: nothing to say
                del self.failed[name]
        for name, want in self._differences(desired):
            failed = self.failed.get(name)
            if failed is not None and failed.wanted == want:
                continue  # tried and failed here: the next change of this model tries again
            try:
                if want is None:
                    if name in self.registry.models:
                        await self.registry.unload_model(name)
                    self.loaded_at.pop(name, None)
                else:
                    assert desired is not None
                    wanted = desired.models[name]
                    await self.registry.load_model(name, wanted.versions)
                    served = tuple(sorted(self.registry.models.get(name, {})))
                    if served != wanted.versions:
                        raise ServiceError(
                            f"serves versions {list(served)}, not {list(wanted.versions)}"
                        )
                    self.loaded_at[name] = want
                self.failed.pop(name, None)
            except ServiceError as exc:
                self.failed[name] = Failure(want, generation, exc.message)
                log.error("model control: model %s: %s", name, exc.message)
            except Exception as exc:  # one model's fault must not stop the rest
                self.failed[name] = Failure(want, generation, f"{type(exc).__name__}: {exc}")
                log.exception("model control: model %s could not be applied", name)
        await asyncio.to_thread(self._report, generation)
        self.applied = generation  # only once reported: a failed write is tried again

    def _differences(self, desired: Desired | None) -> list[tuple[str, int | None]]:
        """(model, the generation that should have loaded it, None: unloaded) for each model
        this worker does not serve as models.json says: another load, other versions, or
        served where none should be."""
        if desired is None:
            return []
        found: list[tuple[str, int | None]] = []
        for name in sorted(set(self.loaded_at) | set(desired.models) | set(self.registry.models)):
            wanted = desired.models.get(name)
            served = tuple(sorted(self.registry.models.get(name, {})))
            if wanted is None:
                if served or name in self.loaded_at:
                    found.append((name, None))
            elif self.loaded_at.get(name) != wanted.loaded_at or served != wanted.versions:
                found.append((name, wanted.loaded_at))
        return found

    def _report(self, generation: int) -> None:
        """This worker's file: the generation it serves and what failed here."""
        assert self.folder is not None
        failed = {k: [f.wanted, f.at, f.reason] for k, f in self.failed.items()}
        with self._files:
            if self._left:
                return
            _write_json(
                self.folder / WORKERS / f"{self.ident}.json",
                {"pid": os.getpid(), "generation": generation, "failed": failed},
            )

    def leave(self) -> None:
        """At exit: this worker is waited for no more (a report still under way is dropped)."""
        if self.folder is not None:
            with self._files:
                self._left = True
                (self.folder / WORKERS / f"{self.ident}.json").unlink(missing_ok=True)
