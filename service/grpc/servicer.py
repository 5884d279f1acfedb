"""The methods of the Open Inference Protocol's GRPCInferenceService, as this server answers them.

Each is the gRPC twin of a REST endpoint and shares its code: ``ModelInfer`` is the REST infer's
request life (``service.http.serving.run_request``: admission, batches, deadline, metrics), with
model ``auto`` routed by its ``latency_budget_ms`` / ``min_accuracy`` parameters; the metadata,
readiness, Triton's model configuration and the repository extension answer what their REST
endpoints do. Loading and unloading need ``authorization: Bearer <ROCKETSERVE_API_KEY>`` in the
call's metadata, as the REST ones need the header. ``ModelStreamInfer`` answers each request of
a stream as ``ModelInfer`` does. Methods this server does not offer answer UNIMPLEMENTED with
what to do instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from service.errors import BadRequest, NotFound, ServiceError, Unavailable
from service.grpc import messages as pb
from service.grpc.infer_messages import infer_response, parameters_dict, read_infer_request
from service.grpc.messages import read_message
from service.http.serving import Prepared, Resolver, run_request
from service.http.state import ServiceState, control_of
from service.http.v2_config import model_config
from service.http.v2_infer import is_routed, model_spec, request_batch, route
from service.http.v2_routes import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    authorise,
    model_metadata,
    refuse_overrides,
    served_statistics,
)
from service.inputs.v2_request import client_timeout_s
from service.repository.registry import ModelRegistry, ServedModel

log = logging.getLogger("service")

HEALTH_SERVICE = "inference.GRPCInferenceService"  # the service, as health checks name it

# method -> (request message, response message)
METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse),
}
_SHARED_MEMORY = (False, "send tensors in the request (raw_input_contents or contents)")
# method -> (streaming, what to do instead)
UNSUPPORTED: dict[str, tuple[bool, str]] = {
    "SystemSharedMemoryStatus": _SHARED_MEMORY,
    "SystemSharedMemoryRegister": _SHARED_MEMORY,
    "SystemSharedMemoryUnregister": _SHARED_MEMORY,
    "CudaSharedMemoryStatus": _SHARED_MEMORY,
    "CudaSharedMemoryRegister": _SHARED_MEMORY,
    "CudaSharedMemoryUnregister": _SHARED_MEMORY,
    "TraceSetting": (False, "GET /metrics has per-model latency histograms"),
    "LogSettings": (False, "set ROCKETSERVE_LOG_LEVEL and ROCKETSERVE_LOG_FORMAT at start"),
}


# ModelStreamInfer: the requests of one stream being answered or waiting to be read; the
# stream is read no further until one is (HTTP/2 flow control then holds the client back).
STREAM_WINDOW = 64
FINAL_RESPONSE = "triton_final_response"


def _version(value: str) -> str | None:
    return value or None


class Servicer:
    """The service's methods over one app's ServiceState."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        # read once: it counts the usable cores, from the cgroup's files
        self.in_flight_limit = state.settings.in_flight_limit

    def refused(self, exc: ServiceError) -> None:
        """Count an infer call refused before its model is known, as the REST gate does."""
        self.state.metrics.requests.labels("unknown", "", str(exc.status)).inc()

    def _registry(self) -> ModelRegistry:
        registry = self.state.registry
        if registry is None:
            raise Unavailable("models are not loaded yet", code="not_ready")
        return registry

    def _resolve(self, name: str, version: str) -> ServedModel:
        if not name:
            raise BadRequest("a model name is required")
        return self._registry().resolve(model_spec(name, _version(version)))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Ready when every model version is and the server is not draining (as /v2/health)."""
        state = self.state
        ok = state.registry is not None and state.registry.ready and not state.draining
        return pb.ServerReadyResponse(ready=ok)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Whether the version takes requests; an unknown one is not ready."""
        try:
            served = self._resolve(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=served.ready and served.batcher.running)

    async def HealthCheck(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """gRPC's health check (grpc.health.v1.Health/Check): the server (``service`` empty) or
        this service is SERVING when ready, as ServerReady says; another service is unknown."""
        if request.service not in ("", HEALTH_SERVICE):
            raise NotFound(
                f"unknown service {request.service!r}; this server serves {HEALTH_SERVICE!r}"
            )
        ready = (await self.ServerReady(request, context)).ready
        status = pb.HealthCheckResponse.SERVING if ready else pb.HealthCheckResponse.NOT_SERVING
        return pb.HealthCheckResponse(status=status)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Name, version and the protocol extensions, as GET /v2."""
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Inputs and outputs of a version, as GET /v2/models/{name}."""
        served = self._resolve(request.name, request.version)
        metadata = model_metadata(self._registry(), served)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's model configuration of a version, as GET /v2/models/{name}/config."""
        served = self._resolve(request.name, request.version)
        config = json_format.ParseDict(model_config(served, self.state.settings), pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's statistics of every served version (no name), of a model's versions (no
        version) or of one version, as GET /v2/models[/{name}[/versions/{v}]]/stats."""
        registry = self._registry()
        if not request.name:
            versions = registry.all()
        elif not request.version:
            versions = registry.versions(request.name)
        else:
            versions = [self._resolve(request.name, request.version)]
        answer = await served_statistics(self.state, versions)
        return json_format.ParseDict(answer, pb.ModelStatisticsResponse())

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One inference: the REST infer's life, from this call's arrival."""
        started = time.monotonic()
        state = self.state
        limit = self.in_flight_limit
        if limit and state.predicting >= limit:
            refusal = Unavailable(
                f"{limit} requests are in flight; retry later",
                code="overloaded",
                headers={"Retry-After": str(state.settings.retry_after_s)},
            )
            self.refused(refusal)
            raise refusal
        settings = state.settings

        async def prepare(models: Resolver) -> Prepared[Any]:
            name, version = request.model_name, _version(request.model_version)
            if not name:
                raise BadRequest("a model name is required (model_name)")
            note = None
            if is_routed(name, version, models):
                infer = read_infer_request(request)
                served, note = route(infer, models)
            else:
                served = models.resolve(model_spec(name, version))
                infer = read_infer_request(request)
            timeout_s = client_timeout_s(infer.parameters)
            batch = await request_batch(infer, served, settings)
            return Prepared(
                served,
                batch,
                lambda result, _: infer_response(served, infer, result, note),
                timeout_s,
            )

        state.predicting += 1
        try:
            return await run_request(state, started, prepare)
        finally:
            state.predicting -= 1

    async def ModelStreamInfer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests of one bidirectional stream, each answered as ModelInfer answers it and in
        the order they came (up to STREAM_WINDOW run at once); a request's error is its answer's
        ``error_message`` and the stream goes on, as Triton's does. From SIGTERM on, a request
        read is answered that the server is shutting down; those read before are answered."""
        answers: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def one(raw: bytes) -> Any:
            request = pb.ModelInferRequest()
            try:
                request = read_message(pb.ModelInferRequest, raw)
                if self.state.draining:  # as a REST connection takes no new request then
                    raise Unavailable(
                        "the server is shutting down: send the request again (to another replica)",
                        code="shutting_down",
                    )
                answer = pb.ModelStreamInferResponse(
                    infer_response=await self.ModelInfer(request, context)
                )
            except ServiceError as exc:
                answer = _stream_error(request, exc.message)
            except Exception:
                log.exception("unhandled error in gRPC ModelStreamInfer")
                answer = _stream_error(request, "internal server error")
            # a request has one answer, so each is its request's last, as Triton marks them
            answer.infer_response.parameters[FINAL_RESPONSE].bool_param = True
            return answer

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    answers.put_nowait(asyncio.create_task(one(request)))
            finally:  # the end of the answers, also when the stream broke
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        pending: list[asyncio.Task[Any]] = []
        try:
            while (task := await answers.get()) is not None:
                pending.append(task)
                answer = await task
                pending.remove(task)
                window.release()
                yield answer
            await reader  # its error, if the stream broke
        finally:
            reader.cancel()
            for task in pending:
                task.cancel()
            while not answers.empty():
                queued = answers.get_nowait()
                if queued is not None:
                    queued.cancel()

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Every model of the repository and its versions' states, as POST /v2/repository/index."""
        entries = self._registry().index()
        if request.ready:
            entries = [e for e in entries if e["state"] == "READY"]
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Load or reload a model from its folder (explicit model control, the API key)."""
        authorise(self.state.settings, _authorization(context))
        refuse_overrides(parameters_dict(request.parameters))
        if not request.model_name:
            raise BadRequest("a model name is required (model_name)")
        await control_of(self.state).load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Stop serving a model; the requests it accepted still get their answers."""
        authorise(self.state.settings, _authorization(context))
        await control_of(self.state).unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _stream_error(request: Any, message: str) -> Any:
    """A stream's answer to a failed request: the error, and the request's id to match it."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def _authorization(context: grpc.aio.ServicerContext) -> str:
    """The call's ``authorization`` metadata ("" when absent)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return ""
