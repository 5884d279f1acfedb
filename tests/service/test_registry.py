"""Loading a repository: integrity checks, version resolution, providers, bad repositories."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.contract.model_card import ModelRepositoryError, model_file, read_manifest
from service.errors import NotFound
from service.http.app import create_app
from service.inference.session import CPU, OnnxModel, choose_provider, shape_bucket
from service.observability.metrics import ServiceMetrics
from service.repository.registry import ModelRegistry
from service.settings import Settings
from tests.service.test_endpoints import samples
from tests.support.onnx_repo import build_digits_model


@pytest.fixture
def repo_copy(digits_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the digits repository that a test may break."""
    return Path(shutil.copytree(digits_repo, tmp_path / "repo"))


def load(repo: Path, **overrides: object) -> ModelRegistry:
    overrides.setdefault("version_policy", "all")
    settings = Settings(model_repository=repo, warmup_runs=1, **overrides)  # type: ignore[arg-type]
    return ModelRegistry.load(settings, ServiceMetrics())


def test_resolution_of_names_and_versions(digits_repo: Path) -> None:
    registry = load(digits_repo)
    assert registry.default.name == "digits-logreg" and registry.default.version == 2
    assert registry.resolve(None) is registry.default
    assert registry.resolve("digits-logreg:1").version == 1
    assert registry.resolve("digits-slow").version == 1
    for spec in ("nope", "digits-logreg:3", "digits-logreg:", "digits-logreg:-1"):
        with pytest.raises(NotFound):
            registry.resolve(spec)
    assert all(m.ready and m.runtime.provider == CPU for m in registry.all())
    assert load(digits_repo, default_model="digits-slow").default.name == "digits-slow"


def test_tampered_model_file_is_skipped_or_refused_when_strict(repo_copy: Path) -> None:
    with (repo_copy / "digits-logreg" / "1" / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    registry = load(repo_copy)
    assert sorted(registry.models["digits-logreg"]) == [2]  # the other versions are served
    assert sorted(registry.models) == ["digits-logreg", "digits-slow"]
    [failure] = registry.failures
    assert (failure.model, failure.version) == ("digits-logreg", 1)
    assert failure.line().startswith("model digits-logreg:1 not served: ")
    assert "1/model.onnx: size or sha256 differs" in failure.line()
    with pytest.raises(ModelRepositoryError, match=r"1/model.onnx: size or sha256 differs"):
        load(repo_copy, strict_models=True)


def test_version_without_record_is_not_served(repo_copy: Path) -> None:
    shutil.copytree(repo_copy / "digits-logreg" / "1", repo_copy / "digits-logreg" / "7")
    registry = load(repo_copy)
    assert sorted(registry.models["digits-logreg"]) == [1, 2]


def test_missing_main_version_skips_the_model(repo_copy: Path) -> None:
    shutil.rmtree(repo_copy / "digits-slow" / "1")
    registry = load(repo_copy)
    assert sorted(registry.models) == ["digits-logreg"]
    assert "version 1 of the manifest is missing" in registry.failures[0].reason
    with pytest.raises(ModelRepositoryError, match="version 1 of the manifest is missing"):
        load(repo_copy, strict_models=True)


def test_manifest_input_must_match_the_graph(repo_copy: Path) -> None:
    path = repo_copy / "digits-slow" / "manifest.json"
    card = json.loads(path.read_text())
    card["input"]["name"] = "pixels"
    path.write_text(json.dumps(card))
    assert "'pixels' is not a graph input" in load(repo_copy).failures[0].reason
    with pytest.raises(ModelRepositoryError, match="'pixels' is not a graph input"):
        load(repo_copy, strict_models=True)


def test_output_width_must_match_the_labels(repo_copy: Path) -> None:
    path = repo_copy / "digits-slow" / "manifest.json"
    card = json.loads(path.read_text())
    card["labels"] = card["labels"][:9]
    path.write_text(json.dumps(card))
    with pytest.raises(ModelRepositoryError, match=r"shape \[.*, 10\], but the card has 9 labels"):
        load(repo_copy, strict_models=True)


def test_nothing_servable_is_an_error(repo_copy: Path) -> None:
    for name in ("digits-logreg", "digits-slow"):
        (repo_copy / name / "manifest.json").write_text("{not json")
    with pytest.raises(ModelRepositoryError, match="no model version could be served; model "):
        load(repo_copy)


def test_unknown_default_model_and_empty_repository(digits_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match="default_model 'nope'"):
        load(digits_repo, default_model="nope")
    with pytest.raises(ModelRepositoryError, match="no model folders"):
        load(tmp_path)


def test_provider_choice_on_a_cpu_only_runtime() -> None:
    assert choose_provider("cpu") == CPU
    assert choose_provider("auto") == CPU  # this machine has no onnxruntime-gpu
    with pytest.raises(ModelRepositoryError, match="onnxruntime-gpu"):
        choose_provider("cuda")


async def test_app_start_up_fails_on_a_broken_repository_when_strict(
    repo_copy: Path, make_settings: Callable[..., Settings]
) -> None:
    shutil.rmtree(repo_copy / "digits-slow" / "1")
    app = create_app(make_settings(model_repository=repo_copy, strict_models=True))
    with pytest.raises(ModelRepositoryError):
        async with app.router.lifespan_context(app):
            pass


def test_io_binding_path_gives_the_plain_run_results(digits_repo: Path) -> None:
    card = read_manifest(digits_repo / "digits-slow")
    path = model_file(digits_repo / "digits-slow", 1)
    plain = OnnxModel(path, card, CPU, 1)
    bound = OnnxModel(path, card, CPU, 1, io_binding=True)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(bound(x), plain(x))
    assert bound(x).shape == (5, 10)


def test_a_bucketed_model_pads_each_batch_to_its_bucket_and_keeps_a_session_per_bucket(
    digits_repo: Path,
) -> None:
    """The CUDA path (shape buckets), run on CPU: every batch size answers as the plain session
    does, and each bucket's session only ever sees its own shape."""
    card = read_manifest(digits_repo / "digits-slow")
    path = model_file(digits_repo / "digits-slow", 1)
    plain = OnnxModel(path, card, CPU, 1)
    bucketed = OnnxModel(path, card, CPU, 1, bucketed=True)
    assert not plain.bucketed and bucketed.bucketed and bucketed.buckets == (1,)
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    for rows in (1, 2, 3, 4, 5, 16, 17, 40):
        got = bucketed(x[:rows])
        assert got.shape == (rows, 10)
        # a padded row changes no other row's logits: the net treats each image alone
        np.testing.assert_allclose(got, plain(x[:rows]), rtol=1e-5, atol=1e-6)
    assert bucketed.buckets == (1, 4, 16, 64)
    assert [shape_bucket(n) for n in (1, 2, 4, 5, 16, 17, 64, 65)] == [1, 4, 4, 16, 16, 64, 64, 256]


def test_concurrent_first_calls_of_a_bucket_open_one_session(digits_repo: Path) -> None:
    card = read_manifest(digits_repo / "digits-slow")
    path = model_file(digits_repo / "digits-slow", 1)
    bucketed = OnnxModel(path, card, CPU, 1, bucketed=True)
    x = np.zeros((3, 1, 8, 8), np.float32)
    opened: list[object] = []
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda _: opened.append(bucketed._bucket_session(4)) or bucketed(x), range(8))
        )
    assert bucketed.buckets == (1, 4) and len({id(s) for s in opened}) == 1


def test_tiny_models_get_one_thread_that_does_not_spin_by_default(
    make_settings: Callable[..., Settings],
) -> None:
    spin = "session.intra_op.allow_spinning"
    registry = ModelRegistry.load(make_settings(), ServiceMetrics())
    for served in registry.all():
        opts = served.runtime.session.get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
        assert opts.get_session_config_entry(spin) == "0"
    tuned = ModelRegistry.load(
        make_settings(intra_op_threads=2, intra_op_spinning=True), ServiceMetrics()
    )
    opts = tuned.default.runtime.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.get_session_config_entry(spin) == "1"


def test_tiny_models_run_lone_requests_inline_unless_turned_off(
    make_settings: Callable[..., Settings],
) -> None:
    # The digits logistic regressions take microseconds: far below the 2 ms default.
    registry = ModelRegistry.load(make_settings(), ServiceMetrics())
    assert all(m.batcher.inline for m in registry.all())
    off = ModelRegistry.load(make_settings(inline_inference_max_ms=0), ServiceMetrics())
    assert not any(m.batcher.inline for m in off.all())


def test_a_file_the_process_cannot_read_skips_its_model(
    repo_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError reading a model (a root-owned 0600 file in an image run as another user) skips
    that model like any other load failure, instead of ending the start-up."""
    import service.repository.loading as loading

    real = loading.verified_versions

    def unreadable(model_dir: Path, card: object) -> object:
        if model_dir.name == "digits-slow":
            raise PermissionError(13, "Permission denied", str(model_dir / "1" / "model.onnx"))
        return real(model_dir, card)  # type: ignore[arg-type]

    monkeypatch.setattr(loading, "verified_versions", unreadable)
    registry = load(repo_copy)
    assert sorted(registry.models) == ["digits-logreg"]
    [failure] = registry.failures
    assert failure.model == "digits-slow" and "PermissionError" in failure.reason


async def test_run_time_faults_are_4xx_and_the_replica_without_models_is_not_ready(
    repo_copy: Path,
) -> None:
    settings = Settings(
        model_repository=repo_copy,
        warmup_runs=1,
        model_control_mode="explicit",
        api_key="k",
        strict_models=True,
    )
    app = create_app(settings)
    auth = {"Authorization": "Bearer k"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            with (repo_copy / "digits-slow" / "1" / "model.onnx").open("ab") as fh:
                fh.write(b"\0")
            # strict: the broken version is refused, a 400 that says why, not a 500
            r = await c.post("/v2/repository/models/digits-slow/load", headers=auth)
            assert r.status_code == 400 and "sha256 differs" in r.text, r.text
            assert (await c.get("/readyz")).status_code == 200  # the serving version is kept
            for name in ("digits-slow", "digits-logreg"):
                r = await c.post(f"/v2/repository/models/{name}/unload", headers=auth)
                assert r.status_code == 200, r.text
            # nothing served: every request would be a 404, so the replica is not ready
            assert (await c.get("/readyz")).status_code == 503
            ready = await c.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.json() == {"ready": False}


def test_a_repository_that_cannot_be_listed_is_no_news(tmp_path: Path) -> None:
    from service.repository.polling import snapshot

    assert snapshot(tmp_path / "gone") is None
    assert snapshot(tmp_path) == {}  # listed, and empty: every model removed


async def test_retired_and_unloaded_versions_leave_the_gauges(repo_copy: Path) -> None:
    settings = Settings(
        model_repository=repo_copy,
        warmup_runs=1,
        model_control_mode="explicit",
        api_key="k",
        version_policy="latest:1",
    )
    app = create_app(settings)
    auth = {"Authorization": "Bearer k"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            build_digits_model(repo_copy, "digits-logreg", 3)
            for action, name in (("load", "digits-logreg"), ("unload", "digits-slow")):
                r = await c.post(f"/v2/repository/models/{name}/{action}", headers=auth)
                assert r.status_code == 200, r.text
            exposition = (await c.get("/metrics")).text

    measured = samples(exposition)

    def value(name: str, **labels: str) -> float:
        [found] = [v for (n, ls), v in measured.items() if n == name and labels.items() <= set(ls)]
        return found

    lr, slow = "digits-logreg", "digits-slow"
    assert value("rocketserve_model_info", model=lr, version="3") == 1
    assert value("rocketserve_model_info", model=lr, version="2") == 0  # rolled out: retired
    assert value("rocketserve_queue_capacity", model=lr, version="2") == 0
    assert value("rocketserve_model_ready", model=lr, version="2") == 0
    assert value("rocketserve_model_versions", model=lr, state="ready") == 1
    assert value("rocketserve_model_versions", model=slow, state="ready") == 0
    assert value("rocketserve_model_info", model=slow, version="1") == 0


async def test_the_poller_keeps_serving_while_the_repository_cannot_be_listed(
    digits_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.repository.polling as polling

    registry = load(digits_repo)
    poller = polling.RepositoryPoller(registry, digits_repo, interval_s=0.01)
    assert set(poller.applied) == {"digits-logreg", "digits-slow"}
    applied: list[object] = []

    async def apply(now: object) -> None:
        applied.append(now)

    monkeypatch.setattr(poller, "apply", apply)
    # a remount: cannot be listed, or lists an empty folder for a while
    for listing in (None, {}):
        monkeypatch.setattr(polling, "snapshot", lambda repo, listing=listing: listing)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert applied == []  # not read as every model removed
        assert sorted(registry.models) == ["digits-logreg", "digits-slow"]


async def test_unloading_the_default_chooses_it_again_and_forgets_the_failures(
    repo_copy: Path,
) -> None:
    """The default chosen by budget (no default_model setting) follows what is served: a request
    that names no model still has one after the default is unloaded."""
    registry = load(repo_copy, model_control_mode="explicit")
    registry.start()
    first = registry.resolve(None).name
    await registry.unload_model(first)
    assert registry.resolve(None).name != first and registry.resolve(None).name in registry.models
    await registry.close()
    # A model's skipped versions are forgotten when it is unloaded (nothing of it is tried).
    (repo_copy / "digits-logreg" / "1" / "model.onnx").write_bytes(b"tampered")
    registry = load(repo_copy, model_control_mode="explicit", version_policy="all")
    registry.start()
    assert [(f.model, f.version) for f in registry.failures] == [("digits-logreg", 1)]
    await registry.unload_model("digits-logreg")
    assert registry.failures == []
    failed = samples(registry.metrics.exposition().decode())[
        ("rocketserve_model_versions", (("model", "digits-logreg"), ("state", "failed")))
    ]
    assert failed == 0
    await registry.close()


async def test_explicit_mode_loads_the_startup_models_and_lists_the_rest(
    digits_repo: Path,
) -> None:
    """``startup_models`` (Triton's --load-model): only those load at start; the others are in
    the index as unloaded, and load when asked."""
    registry = load(digits_repo, model_control_mode="explicit", startup_models="digits-slow")
    registry.start()
    try:
        assert set(registry.models) == {"digits-slow"}
        unloaded = [e for e in registry.index() if e["name"] == "digits-logreg"]
        assert unloaded and all(
            (e["state"], e["reason"]) == ("UNAVAILABLE", "unloaded") for e in unloaded
        )
        await registry.load_model("digits-logreg")
        assert sorted(registry.models["digits-logreg"]) == [1, 2]  # version_policy all
    finally:
        await registry.close()
