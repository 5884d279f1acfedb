"""ArrivalHttpToolsProtocol: uvicorn's httptools protocol, stamping each request's arrival."""

from __future__ import annotations

import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.uvicorn_hooks import ARRIVAL_KEY, publish_tasks


class ArrivalHttpToolsProtocol(HttpToolsProtocol):
    """httptools protocol: each scope carries its arrival instant (deadlines count from it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        publish_tasks(self.tasks)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"][ARRIVAL_KEY] = time.monotonic()
