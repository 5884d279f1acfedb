"""Load-generator clients: pre-encoded /predict bodies sent with httpx or the lean client."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx

from loadtest.leanhttp import LeanConnection, LeanHTTPError, build_request
from loadtest.payloads import ModelInfo, SampleImage, encode_multipart, json_body

ClientKind = Literal["lean", "httpx"]
Payload = Literal["multipart", "json"]
TRANSPORT_ERRORS = (httpx.HTTPError, LeanHTTPError)


def encode_request(
    model: ModelInfo, images: Sequence[SampleImage], payload: Payload
) -> tuple[bytes, str]:
    """Body and content type of one /predict request for ``model``, encoded once."""
    if payload == "json":
        return json.dumps(json_body(images, model.name)).encode(), "application/json"
    return encode_multipart(images, {"model": model.name})


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def new_httpx_client(url: str, connections: int, timeout_s: float) -> httpx.AsyncClient:
    """An httpx client keeping up to ``connections`` connections open.

    The TLS context is shared: httpx builds a new one per client otherwise (~30 ms of CPU),
    which would make starting 128 workers look like server latency.
    """
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s, verify=_tls_context())


class PredictClient:
    """Sends body ``i`` (cycled) of a fixed list to POST /predict over kept-open connections."""

    def __init__(
        self,
        url: str,
        bodies: Sequence[tuple[bytes, str]],
        kind: ClientKind = "lean",
        connections: int = 1,
        timeout_s: float = 30.0,
    ) -> None:
        self._url, self._kind, self._timeout = url, kind, timeout_s
        self._bodies = list(bodies)
        self._raw = [build_request(url, "/predict", b, ct) for b, ct in self._bodies]
        self._httpx = new_httpx_client(url, connections, timeout_s) if kind == "httpx" else None
        self._idle: list[LeanConnection] = []
        self._slots = asyncio.Semaphore(connections)

    async def send(self, i: int) -> Any:
        """The response (``status_code``, ``headers``, ``json()``, ``text``) to body ``i``."""
        return (await self.send_timed(i))[0]

    async def send_timed(self, i: int) -> tuple[Any, float]:
        """The response to body ``i`` and the ``perf_counter()`` instant it went on the wire.

        With the lean client that instant is after a free connection was found, so waiting
        for one inside this client is not counted as service latency; httpx hides its pool,
        so there it is the instant of the call.
        """
        if self._httpx is not None:
            content, content_type = self._bodies[i % len(self._bodies)]
            t0 = time.perf_counter()
            resp = await self._httpx.post(
                "/predict", content=content, headers={"content-type": content_type}
            )
            return resp, t0
        async with self._slots:
            conn = self._idle.pop() if self._idle else LeanConnection(self._url, self._timeout)
            try:
                t0 = time.perf_counter()
                return await conn.request(self._raw[i % len(self._raw)]), t0
            finally:
                self._idle.append(conn)

    async def aclose(self) -> None:
        """Close every connection."""
        if self._httpx is not None:
            await self._httpx.aclose()
        for conn in self._idle:
            await conn.close()
        self._idle.clear()

    async def __aenter__(self) -> PredictClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
