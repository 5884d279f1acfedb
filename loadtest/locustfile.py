"""Locust users sending real images to POST /predict across the served models; every answer checked.

    locust -f loadtest/locustfile.py --headless -u 32 -r 8 -t 30s \
        --host http://127.0.0.1:8000 --csv OUT

Scenarios are tags (``--tags NAME``); without ``--tags`` the first two run together:

- ``all-models``: every model found by GET /models, 1-4 images per request, multipart or JSON.
- ``one-model``: one image per request to one model (``--target-model NAME``, default the first).
- ``overload``: no think time; 503/504 answers carrying Retry-After count as success (the service
  shedding load as designed), anything else that is not a valid 200 is a failure. Run it alone,
  with many users: ``--tags overload -u 256 -r 64``.

Every 200 is checked: the right model, one top-k list per input, each label one of the model's
labels with the matching index, each score in [0, 1].
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, events, tag, task
from locust.env import Environment

if __package__ in (None, ""):  # run by path (locust -f): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.payloads import (
    ModelInfo,
    SampleImage,
    check_prediction,
    images_for,
    json_body,
    multipart_files,
    parse_models,
)

log = logging.getLogger("rocketserve.locust")
SHED_STATUSES = (503, 504)
_normal_wait = between(0.05, 0.25)
_served: list[tuple[ModelInfo, list[SampleImage]]] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--target-model", default="", help="Model of the one-model scenario (default: the first)."
    )


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    """Exclude the overload task unless asked for; discover the models when --host is known."""
    options = environment.parsed_options
    if options is not None and not options.tags:
        options.exclude_tags = sorted({*(options.exclude_tags or []), "overload"})
    if environment.host and not getattr(options, "worker", False):
        error = _discover(environment)
        if error:
            log.error("%s", error)
            sys.exit(2)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    """Discover the models if --host was only given in the web UI; stop the run on failure."""
    if _served:
        return
    error = _discover(environment)
    if error:
        log.error("%s", error)
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn_later(0.1, environment.runner.quit)


def _discover(environment: Environment) -> str | None:
    """Read the served models into ``_served``; an error message when that is not possible."""
    import httpx

    try:
        resp = httpx.get(f"{environment.host}/models", timeout=10.0)
        resp.raise_for_status()
        models = parse_models(resp.json())
    except (httpx.HTTPError, ValueError, json.JSONDecodeError) as exc:
        return f"cannot discover models at {environment.host}/models: {exc}"
    wanted = getattr(environment.parsed_options, "target_model", "")
    if wanted and wanted not in {m.name for m in models}:
        return f"--target-model {wanted} is not served; served: {[m.name for m in models]}"
    _served[:] = [(m, images_for(m)) for m in models]
    log.info("load testing models: %s", ", ".join(m.name for m, _ in _served))
    return None


class ClassifierUser(HttpUser):
    """A client of the image classification service."""

    def wait_time(self) -> float:
        """Think time between requests; none in the overload scenario."""
        options = self.environment.parsed_options
        if options is not None and options.tags == ["overload"]:
            return 0.0
        return float(_normal_wait(self))

    def _predict(
        self,
        model: ModelInfo,
        images: list[SampleImage],
        transport: str,
        shed_ok: bool = False,
    ) -> None:
        top_k = random.randint(1, 3)
        if transport == "json":
            kwargs: dict[str, Any] = {"json": {**json_body(images, model.name), "top_k": top_k}}
        else:
            kwargs = {
                "files": multipart_files(images),
                "data": {"model": model.name, "top_k": str(top_k)},
            }
        name = f"/predict {model.name} {transport} x{len(images)}"
        with self.client.post("/predict", name=name, catch_response=True, **kwargs) as resp:
            if resp.status_code == 200:
                try:
                    reason = check_prediction(resp.json(), model, len(images), top_k)
                except ValueError:
                    reason = "200 with a body that is not JSON"
            elif shed_ok and resp.status_code in SHED_STATUSES:
                has_retry = "Retry-After" in resp.headers
                reason = None if has_retry else f"{resp.status_code} without Retry-After"
            else:
                reason = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if reason is None:
                resp.success()
            else:
                resp.failure(reason)

    def _pick(self) -> tuple[ModelInfo, list[SampleImage]]:
        if not _served:
            raise RuntimeError("no served models were discovered")
        return random.choice(_served)

    @tag("all-models")
    @task(3)
    def all_models(self) -> None:
        """A random model, 1-4 random images, multipart or JSON."""
        model, images = self._pick()
        batch = random.sample(images, k=min(len(images), random.randint(1, 4)))
        self._predict(model, batch, random.choice(("multipart", "json")))

    @tag("one-model")
    @task(1)
    def one_model(self) -> None:
        """One image to the model named by --target-model (default: the first served)."""
        wanted = getattr(self.environment.parsed_options, "target_model", "")
        chosen = [s for s in _served if s[0].name == wanted] if wanted else _served[:1]
        model, images = chosen[0] if chosen else self._pick()
        self._predict(model, [random.choice(images)], "multipart")

    @tag("overload")
    @task(1)
    def overload(self) -> None:
        """One image, no think time, load shedding (503/504 + Retry-After) accepted."""
        model, images = self._pick()
        self._predict(model, [random.choice(images)], "multipart", shed_ok=True)
