"""ArrivalHttpToolsProtocol: uvicorn's httptools protocol, stamping arrivals and holding headers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.uvicorn_hooks import ARRIVAL_KEY, HeaderHoldingTransport, publish_tasks


class ArrivalHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol: each scope carries its arrival instant; one send() per answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        publish_tasks(self.tasks)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Every later write of this connection (the responses) goes through the holder.
        self.transport = HeaderHoldingTransport(transport, self.loop)  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][ARRIVAL_KEY] = time.monotonic()
