"""The published OpenAPI document describes what /predict really answers: each form and error."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from jsonschema import Draft202012Validator, ValidationError
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.http.app import create_app
from service.settings import Settings
from tests.service.test_errors import CASES
from tests.support.server import running_service

pytestmark = pytest.mark.timeout(120)

BASE = "urn:rocketserve:openapi"


def png(value: int = 7) -> bytes:
    """An 8x8 grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value * 30, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class PublishedSchema:
    """Validates answers (and JSON request bodies) against an OpenAPI document as served."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        resource = Resource.from_contents(doc, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(BASE, resource)
        self.operation = doc["paths"]["/predict"]["post"]

    def _validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(self._anchor(schema), registry=self.registry)

    @staticmethod
    def _anchor(schema: Any) -> Any:
        """The schema with every local ref pointed into the registered document."""
        if isinstance(schema, dict):
            return {
                k: (BASE + v if k == "$ref" and v.startswith("#") else PublishedSchema._anchor(v))
                for k, v in schema.items()
            }
        if isinstance(schema, list):
            return [PublishedSchema._anchor(v) for v in schema]
        return schema

    def check_answer(self, response: httpx.Response) -> None:
        """The status is documented for POST /predict and the JSON body matches its schema."""
        documented = self.operation["responses"]
        status = str(response.status_code)
        assert status in documented, f"status {status} is not in the OpenAPI document"
        media = documented[status]["content"]
        assert response.headers["content-type"] in media, response.headers["content-type"]
        schema = media[response.headers["content-type"]]["schema"]
        errors = list(self._validator(schema).iter_errors(response.json()))
        assert not errors, f"{status} answer {response.text[:300]} breaks the schema: {errors[0]}"
        for name in documented[status].get("headers", {}):
            assert name.lower() in response.headers, f"{status} without its {name} header"

    def check_json_request(self, body: Any) -> None:
        """A JSON request body matches the published request schema."""
        schema = self.operation["requestBody"]["content"]["application/json"]["schema"]
        self._validator(schema).validate(body)

    def json_request_is_valid(self, body: Any) -> bool:
        """Whether a JSON body matches the published request schema."""
        try:
            self.check_json_request(body)
        except ValidationError:
            return False
        return True


@pytest.fixture(scope="module")
def served(digits_repo: Path) -> Iterator[tuple[httpx.Client, PublishedSchema]]:
    """A real uvicorn on the digits repository, and the OpenAPI document it publishes."""
    env = {"ROCKETSERVE_VERSION_POLICY": "all"}
    with running_service(digits_repo, env) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        doc = c.get("/openapi.json").json()
        yield c, PublishedSchema(doc)


TENSOR3 = np.zeros((1, 8, 8)).tolist()
TENSOR4 = np.zeros((2, 1, 8, 8)).tolist()
B64 = base64.b64encode(png()).decode()

FORMS: list[tuple[str, dict[str, Any]]] = [
    ("raw image/png", {"content": png(), "headers": {"content-type": "image/png"}}),
    ("raw with query", {"url": "/predict?model=digits-slow&top_k=2", "content": png(),
                        "headers": {"content-type": "image/png"}}),
    ("multipart one file", {"files": {"file": ("a.png", png(), "image/png")}}),
    ("multipart two files and fields", {"files": [
        ("file", ("a.png", png(1), "image/png")),
        ("file", ("b.png", png(2), "image/png")),
        ("model", (None, "digits-logreg:1")),
        ("top_k", (None, "3")),
    ]}),
    ("json image", {"json": {"image": B64}}),
    ("json data url", {"json": {"image": "data:image/png;base64," + B64, "top_k": 1}}),
    ("json images", {"json": {"images": [B64, B64], "model": "digits-slow"}}),
    ("json tensor [C,H,W]", {"json": {"tensor": TENSOR3}}),
    ("json tensor [N,C,H,W]", {"json": {"tensor": TENSOR4, "top_k": 10}}),
]  # fmt: skip


@pytest.mark.parametrize(("what", "request_kw"), FORMS, ids=[f[0] for f in FORMS])
def test_every_input_form_is_answered_as_published(
    served: tuple[httpx.Client, PublishedSchema], what: str, request_kw: dict[str, Any]
) -> None:
    client, schema = served
    if "json" in request_kw:
        schema.check_json_request(request_kw["json"])  # the form we send is the published one
    r = client.post(request_kw.pop("url", "/predict"), **request_kw)
    assert r.status_code == 200, r.text
    schema.check_answer(r)


@pytest.mark.parametrize(("what", "request_kw", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_every_client_error_is_answered_as_published(
    served: tuple[httpx.Client, PublishedSchema],
    what: str,
    request_kw: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client, schema = served
    kw = dict(request_kw)
    r = client.post(kw.pop("url", "/predict"), **kw)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    schema.check_answer(r)


def test_the_request_schema_refuses_what_the_service_refuses(
    served: tuple[httpx.Client, PublishedSchema],
) -> None:
    _, schema = served
    for body in (
        {"tensor": TENSOR3, "image": B64},  # two inputs
        {"model": "digits-slow"},  # no input
        {"tensor": TENSOR3, "x": 1},  # unknown field
        {"images": []},
        {"tensor": TENSOR3, "top_k": 0},
        [1, 2],
    ):
        assert not schema.json_request_is_valid(body), body


# What test_server_side_errors_are_answered_as_published produces and checks, in its order.
SERVER_SIDE_STATUSES = (503, 504, 500, 408)


async def _answer(
    settings: Settings, breaks: Callable[[Any], None] | None = None
) -> httpx.Response:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if breaks is not None:
            breaks(app)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/predict", json={"tensor": TENSOR3})


async def test_server_side_errors_are_answered_as_published(digits_repo: Path) -> None:
    settings = Settings(model_repository=digits_repo, warmup_runs=1)
    app = create_app(settings)
    doc = app.openapi()
    schema = PublishedSchema(doc)
    answered: list[int] = []

    # 503: not ready (the models are not loaded: no lifespan has run).
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.post("/predict", json={"tensor": TENSOR3})
    assert r.status_code == 503
    schema.check_answer(r)
    answered.append(r.status_code)

    # 504: the deadline passes before the answer is ready.
    late = Settings(model_repository=digits_repo, warmup_runs=1, request_timeout_ms=0.001)
    r = await _answer(late)
    assert r.status_code == 504
    schema.check_answer(r)
    answered.append(r.status_code)

    # 500: a fault inside the server.
    def broken(app: Any) -> None:
        def fail(_: object) -> None:
            raise RuntimeError("a bug")

        app.state.service.registry.resolve = fail

    r = await _answer(settings, broken)
    assert r.status_code == 500
    schema.check_answer(r)
    answered.append(r.status_code)

    # 408: the body does not arrive in time.
    slow = Settings(model_repository=digits_repo, warmup_runs=1, body_read_timeout_s=0.05)
    app = create_app(slow)
    sent: list[dict[str, Any]] = []

    async def never() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-type", b"image/png")], "state": {}}  # fmt: skip
    async with app.router.lifespan_context(app):
        await app(scope, never, send)
    start, body = sent
    headers = [(k.decode(), v.decode()) for k, v in start["headers"]]
    r = httpx.Response(start["status"], headers=headers, content=body["body"])
    assert r.status_code == 408
    schema.check_answer(r)
    answered.append(r.status_code)
    assert sorted(answered) == sorted(SERVER_SIDE_STATUSES)


def test_every_documented_error_status_is_produced_by_a_test() -> None:
    produced = {status for _, _, status, _ in CASES} | set(SERVER_SIDE_STATUSES)
    documented = {
        int(s)
        for s in create_app(Settings(model_repository=Path("."))).openapi()["paths"]["/predict"][
            "post"
        ]["responses"]
    }
    assert documented - {200} == produced
