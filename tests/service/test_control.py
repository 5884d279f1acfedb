"""Explicit model control across worker processes: a load or unload is answered once every
worker serves it; a worker that fails or lags is named; late workers catch up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.errors import NotFound, ServiceError, Unavailable
from service.observability.metrics import ServiceMetrics
from service.repository.control import (
    ENV,
    WORKERS,
    ModelControl,
    announce,
    read_desired,
    share_control_across_workers,
)
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.support.cli import ROOT
from tests.support.onnx_repo import build_digits_model
from tests.support.server import free_port

pytestmark = pytest.mark.timeout(120)


def registry(
    repo: Path, plan: dict[str, tuple[int, ...]] | None = None, **kw: object
) -> ModelRegistry:
    settings = Settings(model_repository=repo, model_control_mode="explicit", warmup_runs=0, **kw)  # type: ignore[arg-type]
    loaded = ModelRegistry.load(settings, ServiceMetrics(), plan=plan)
    loaded.start()
    return loaded


async def start_worker(repo: Path, folder: Path, ident: str, **kw: object) -> ModelControl:
    """What a worker's lifespan does: announce itself, load what models.json says (or the
    start-up models before any change), then join."""
    announce(folder, ident)
    desired = read_desired(folder)
    settings = {k: v for k, v in kw.items() if k != "peer_timeout_s"}
    loaded = registry(repo, desired.plan() if desired else None, **settings)
    timeout = {"peer_timeout_s": kw["peer_timeout_s"]} if "peer_timeout_s" in kw else {}
    control = ModelControl(loaded, folder, ident=ident, started_from=desired, **timeout)  # type: ignore[arg-type]
    await control.join()
    return control


async def stop_worker(control: ModelControl) -> None:
    control.leave()
    await control.registry.close()


@contextlib.asynccontextmanager
async def workers(
    repos: list[Path], folder: Path, follow: bool = True, **kw: float
) -> AsyncIterator[list[ModelControl]]:
    """One registry and ModelControl per repository (the workers of one service, here in one
    process, named ``<pid>.<n>``), sharing ``folder``; each follows the others unless not."""
    controls = [
        await start_worker(repo, folder, f"{os.getpid()}.{n}", **kw) for n, repo in enumerate(repos)
    ]
    tasks = [asyncio.create_task(c.follow()) for c in controls] if follow else []
    try:
        yield controls
    finally:
        for task in tasks:
            task.cancel()
        for control in controls:
            await stop_worker(control)


def served(control: ModelControl) -> dict[str, list[int]]:
    return {name: sorted(v) for name, v in control.registry.models.items()}


async def test_a_change_asked_of_one_worker_is_served_by_all_when_answered(
    digits_repo: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    async with workers([repo, repo, repo], tmp_path / "control") as (a, b, c):
        assert served(a) == served(b) == served(c) == {"digits-logreg": [2], "digits-slow": [1]}
        await a.unload("digits-slow")  # answered: no worker serves it any more
        assert served(b) == served(c) == served(a) == {"digits-logreg": [2]}
        build_digits_model(repo, "digits-logreg", version=3)
        await b.load("digits-logreg")  # a reload: same name, new version, in every worker
        await c.load("digits-slow")
        assert served(a) == served(b) == served(c) == {"digits-logreg": [3], "digits-slow": [1]}
        desired = read_desired(tmp_path / "control")
        assert desired is not None and desired.generation == 3
        # every worker reported generation 3 (its `applied` follows its report a moment later)
        reports = (tmp_path / "control" / WORKERS).glob("*.json")
        assert {json.loads(p.read_text())["generation"] for p in reports} == {3}
        with pytest.raises(NotFound, match="'digits-gone' is not loaded"):
            await c.unload("digits-gone")


async def test_a_worker_that_cannot_load_is_named_and_keeps_what_it_served(
    digits_repo: Path, tmp_path: Path
) -> None:
    """The asked worker loads the new model; another cannot (its folder lacks it): the answer
    is a 500 naming that worker and why, and that worker still serves what it did; unloading
    the model still works through it (the others serve it)."""
    good = Path(shutil.copytree(digits_repo, tmp_path / "good"))
    short = Path(shutil.copytree(digits_repo, tmp_path / "short"))
    build_digits_model(good, "digits-new")
    async with workers([good, short], tmp_path / "control") as (a, b):
        with pytest.raises(
            ServiceError, match=r"load of model 'digits-new'.*could not: no model"
        ) as caught:
            await a.load("digits-new")
        assert (caught.value.status, caught.value.code) == (500, "partially_applied")
        assert "digits-new" in a.registry.models and "digits-new" not in b.registry.models
        assert b.failed["digits-new"].wanted == a.applied  # not tried again until it changes
        await b.unload("digits-new")  # asked of the worker that lacks it: the others unload
        assert "digits-new" not in a.registry.models
        await a.unload("digits-slow")  # later changes still reach it
        assert "digits-slow" not in b.registry.models


async def test_a_worker_that_cannot_unload_is_named(
    digits_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with workers([digits_repo, digits_repo], tmp_path / "control") as (a, b):

        async def broken(name: str) -> None:
            raise ServiceError("the batcher would not stop")

        monkeypatch.setattr(b.registry, "unload_model", broken)
        with pytest.raises(ServiceError, match=r"unload of model 'digits-slow'.*would not stop"):
            await a.unload("digits-slow")
        assert "digits-slow" in b.registry.models and "digits-slow" not in a.registry.models


async def test_a_report_that_could_not_be_written_is_written_at_the_next_look(
    digits_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.repository import control as module

    async with workers([digits_repo, digits_repo], tmp_path / "control", follow=False) as (a, b):
        real, fails = module._write_json, [1]

        def write(path: Path, value: object) -> None:
            if path.parent.name == WORKERS and path.stem == b.ident and fails:
                fails.pop()
                raise OSError(28, "No space left on device")
            real(path, value)

        monkeypatch.setattr(module, "_write_json", write)
        follower = asyncio.create_task(b.follow())
        try:
            await a.unload("digits-slow")  # answered once b's report is written, a look later
        finally:
            follower.cancel()
        report = json.loads((tmp_path / "control" / WORKERS / f"{b.ident}.json").read_text())
        assert not fails and report["generation"] == 1 and "digits-slow" not in b.registry.models


async def test_a_worker_that_does_not_apply_in_time_is_named(
    digits_repo: Path, tmp_path: Path
) -> None:
    async with workers(
        [digits_repo, digits_repo], tmp_path / "control", follow=False, peer_timeout_s=0.5
    ) as (a, b):
        with pytest.raises(Unavailable, match=rf"process\(es\) {os.getpid()} have not applied"):
            await a.unload("digits-slow")
        assert "digits-slow" in b.registry.models
        await b.follow_once()  # it catches up when it looks
        assert "digits-slow" not in b.registry.models


async def test_a_dead_worker_is_not_waited_for(digits_repo: Path, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "control"
    async with workers([digits_repo], folder, peer_timeout_s=5) as (a,):
        stale = folder / WORKERS / "dead.json"
        stale.write_text(json.dumps({"pid": gone.pid, "generation": 0, "failed": {}}))
        started = time.monotonic()
        await a.unload("digits-slow")
        assert time.monotonic() - started < 1 and not stale.exists()


async def test_changes_asked_of_two_workers_at_once_end_the_same_everywhere(
    digits_repo: Path, tmp_path: Path
) -> None:
    async with workers([digits_repo, digits_repo], tmp_path / "control") as (a, b):
        for _ in range(3):
            await asyncio.gather(a.unload("digits-slow"), b.load("digits-slow"))
            desired = read_desired(tmp_path / "control")
            assert desired is not None
            assert set(served(a)) == set(served(b)) == set(desired.models)


async def test_a_worker_that_starts_later_serves_what_the_others_do(
    digits_repo: Path, tmp_path: Path
) -> None:
    """A worker uvicorn starts in place of one that died loads what models.json says: not its
    start-up models (one of them since removed from the folder), and the versions the others
    serve, not a newer one published since without a load."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    folder = tmp_path / "control"
    async with workers([repo], folder, startup_models="digits-slow") as (a,):
        await a.load("digits-logreg")
        await a.unload("digits-slow")
        shutil.rmtree(repo / "digits-slow")
        build_digits_model(repo, "digits-logreg", version=3)  # published, not loaded
        late = await start_worker(repo, folder, "late", startup_models="digits-slow")
        try:
            assert served(late) == served(a) == {"digits-logreg": [2]}
            assert late.applied == a.applied == 2 and not late.failed
        finally:
            await stop_worker(late)


async def test_a_change_asked_while_a_worker_starts_waits_for_it(
    digits_repo: Path, tmp_path: Path
) -> None:
    """A worker announces itself before it loads: a load answered meanwhile is served by it
    too once it serves, at the versions the asked worker loaded."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    folder = tmp_path / "control"
    async with workers([repo], folder) as (a,):
        announce(folder, "starting")  # it loads the folder as it is now: version 2
        starting = registry(repo)
        build_digits_model(repo, "digits-logreg", version=3)
        asked = asyncio.create_task(a.load("digits-logreg"))
        await asyncio.sleep(0.5)
        assert not asked.done()  # waiting for the worker that is starting
        late = ModelControl(starting, folder, ident="starting")
        await late.join()
        try:
            await asyncio.wait_for(asked, 10)
            assert served(late) == served(a) == {"digits-logreg": [3], "digits-slow": [1]}
        finally:
            await stop_worker(late)


async def test_versions_the_others_serve_are_served_all_or_none(
    digits_repo: Path, tmp_path: Path
) -> None:
    """With every version served, a worker whose folder lacks one of them serves none of the
    model (a part would answer with other versions than the rest of the service) and says so;
    once the model is unloaded it serves nothing of it either."""
    full = Path(shutil.copytree(digits_repo, tmp_path / "full"))
    short = Path(shutil.copytree(digits_repo, tmp_path / "short"))
    build_digits_model(full, "digits-logreg", version=3)
    async with workers([full, short], tmp_path / "control", version_policy="all") as (a, b):
        assert served(a)["digits-logreg"] == [1, 2, 3]  # the first to join wrote models.json
        assert "digits-logreg" not in served(b)
        assert "versions [1, 2, 3] are wanted" in b.failed["digits-logreg"].reason
        with pytest.raises(ServiceError, match="could not") as caught:
            await a.load("digits-logreg")  # a reload: b still cannot serve version 3
        assert caught.value.code == "partially_applied" and "digits-logreg" not in served(b)
        await a.unload("digits-logreg")
        assert "digits-logreg" not in served(a) and "digits-logreg" not in served(b)


async def test_a_worker_that_loaded_other_versions_at_start_serves_the_first_ones(
    digits_repo: Path, tmp_path: Path
) -> None:
    """Before any change: a version published while the workers start (one loads it, one does
    not) is served by none or by all, as the first worker to join wrote models.json."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    folder = tmp_path / "control"
    async with workers([repo], folder) as (a,):
        build_digits_model(repo, "digits-logreg", version=3)  # published, never loaded
        announce(folder, "late")
        late = ModelControl(registry(repo), folder, ident="late")  # it read the folder: v3
        assert served(late)["digits-logreg"] == [3]
        await late.join()
        try:
            assert served(late) == served(a) == {"digits-logreg": [2], "digits-slow": [1]}
        finally:
            await stop_worker(late)


async def test_a_broken_models_json_is_a_503_and_the_followers_carry_on(
    digits_repo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "control"
    async with workers([digits_repo, digits_repo], folder) as (a, b):
        (folder / "models.json").write_text('{"generation": 3, "models": []}')
        with pytest.raises(Unavailable, match=r"models\.json cannot be read"):
            await a.unload("digits-slow")
        await asyncio.sleep(0.2)  # the followers meet it too, and keep serving
        assert served(a) == served(b) == {"digits-logreg": [2], "digits-slow": [1]}


def test_an_operators_folder_keeps_what_is_not_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "shared"
    (folder / WORKERS).mkdir(parents=True)
    for name in ("models.json", "models.lock", f"{WORKERS}/1.json", "precious.txt"):
        (folder / name).write_text("{}")
    monkeypatch.setenv(ENV, str(folder))
    assert share_control_across_workers(2) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]


def test_workers_of_one_service_load_and_unload_as_one(digits_repo: Path, tmp_path: Path) -> None:
    """``python -m service`` with two worker processes: after each answer, requests on fresh
    connections (the kernel hands them to either worker) all find the change."""
    repo = Path(shutil.copytree(digits_repo, tmp_path / "repo"))
    folder, port = tmp_path / "control", free_port()
    key = "control-key"
    env = {
        **os.environ,
        "ROCKETSERVE_WORKERS": "2",
        "ROCKETSERVE_MODEL_CONTROL_MODE": "explicit",
        "ROCKETSERVE_API_KEY": key,
        "ROCKETSERVE_LOG_LEVEL": "warning",
        ENV: str(folder),
    }
    argv = [sys.executable, "-m", "service", "--model-repository", str(repo), "--port", str(port)]
    log = tmp_path / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}

    def everywhere(path: str) -> list[int]:
        return [httpx.get(url + path, timeout=10).status_code for _ in range(24)]

    try:
        deadline = time.monotonic() + 90
        while len(list((folder / WORKERS).glob("*.json"))) < 2:  # both workers joined
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert set(everywhere("/v2/models/digits-slow/ready")) == {200}
        r = httpx.post(url + "/v2/repository/models/digits-slow/unload", headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert set(everywhere("/v2/models/digits-slow/ready")) == {404}
        build_digits_model(repo, "digits-logreg", version=3)
        for name in ("digits-slow", "digits-logreg"):
            r = httpx.post(url + f"/v2/repository/models/{name}/load", headers=auth, timeout=60)
            assert r.status_code == 200, r.text
        assert set(everywhere("/v2/models/digits-slow/ready")) == {200}
        assert set(everywhere("/v2/models/digits-logreg/versions/3/ready")) == {200}
        reports = [json.loads(p.read_text()) for p in (folder / WORKERS).glob("*.json")]
        assert sorted(r["generation"] for r in reports) == [3, 3]
        assert json.loads((folder / "models.json").read_text())["models"]["digits-logreg"] == {
            "loaded_at": 3,
            "versions": [3],
        }
        assert len({r["pid"] for r in reports}) == 2
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_fresh_folder_per_run_and_those_of_killed_runs_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    monkeypatch.setenv(ENV, "")  # unset for the service; restored (removed) after the test
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    abandoned = tmp_path / f"rocketserve-control-{gone.pid}-x"
    abandoned.mkdir()
    assert share_control_across_workers(1) is None  # one worker: no folder
    folder = share_control_across_workers(2)
    assert folder is not None and folder.parent == tmp_path and os.environ[ENV] == str(folder)
    assert not abandoned.exists()
