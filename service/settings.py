"""Service settings: pydantic-settings read from ROCKETSERVE_* environment variables."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ROCKETSERVE_"
IN_FLIGHT_PER_CORE = 128
VERSION_POLICY = re.compile(
    r"^(all|latest:[1-9][0-9]{0,8}|specific:[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*)$"
)
AUTO: Literal["auto"] = "auto"  # the value of a setting the service chooses itself


def parse_version_policy(policy: str) -> tuple[str, tuple[int, ...]]:
    """A version policy (``VERSION_POLICY``) as its kind and numbers: ('all', ()),
    ('latest', (N,)) or ('specific', the versions, sorted)."""
    kind, _, arg = policy.partition(":")
    return kind, tuple(sorted({int(v) for v in arg.split(",")})) if arg else ()


@dataclass(frozen=True)
class AutoOrCount:
    """Parses a setting that is 'auto' or an integer from ``low`` to ``high``, with one message."""

    low: int
    high: int

    def __call__(self, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == AUTO:
            return AUTO
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, int | str) and not isinstance(text, bool):
            try:
                number = int(text)
            except ValueError:
                pass
            else:
                if self.low <= number <= self.high:
                    return number
        raise ValueError(f"must be 'auto' or an integer from {self.low} to {self.high}")


# Thread counts: "auto" (chosen per model version at load, see service/inference/layout.py) or
# an explicit integer, which wins.
IntraOpThreads = Annotated[Literal["auto"] | int, BeforeValidator(AutoOrCount(0, 256))]
InferenceWorkers = Annotated[Literal["auto"] | int, BeforeValidator(AutoOrCount(1, 16))]
# Worker processes: "auto" (chosen from the cards before they start, service/inference/processes.py)
WorkerProcesses = Annotated[Literal["auto"] | int, BeforeValidator(AutoOrCount(1, 64))]


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """The cores a cgroup v2 CPU quota allows (a container's CPU limit, rounded up), if any."""
    try:
        quota, period = path.read_text(encoding="ascii").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (else the machine's count),
    capped by a cgroup CPU quota (a container's or pod's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


class Settings(BaseSettings):
    """Every knob of the service; each field is also ``ROCKETSERVE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model_repository: Path = Field(
        description="Folder of the model repository (<name>/manifest.json, <name>/<v>/model.onnx)."
    )
    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    grpc_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port of the gRPC endpoint (the Open Inference Protocol's "
        "GRPCInferenceService, as Triton's and KServe's gRPC clients call it), on the same "
        "interface; unset, none. Triton's is 8001. Every worker process listens on it "
        "(SO_REUSEPORT).",
    )
    workers: WorkerProcesses = Field(
        AUTO,
        description="uvicorn worker processes, each with its own event loop and a share of the "
        "cores. 'auto': one per core (at most 8) when every model's card times a lone call at "
        "1 ms or less (the loop's work per request then outweighs inference), else 1; always 1 "
        "on CUDA. With model_control_mode 'explicit' a load or unload asked of one worker is "
        "answered once every worker serves it. The choice is logged at start-up.",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="Event loop of uvicorn. asyncio by default: under overload uvloop left new "
        "connections unaccepted for seconds (listen queue never drained), asyncio does not.",
    )
    default_model: str | None = Field(
        None,
        description="Model served when a request names none (name or name:version). By "
        "default: the most accurate model whose card's batch-1 p99 is within "
        "default_latency_budget_ms (the best student on the Pareto front, for the zoo).",
    )
    default_latency_budget_ms: float = Field(
        1.0,
        gt=0,
        description="The latency budget that picks the default model from the cards when "
        "default_model is unset (if no card meets it: the fastest model).",
    )
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="ONNX Runtime execution provider: 'auto' takes CUDA when onnxruntime-gpu "
        "and a GPU are present, else CPU; 'cuda' fails at start-up without them.",
    )
    intra_op_threads: IntraOpThreads = Field(
        AUTO,
        description="ONNX Runtime intra-op threads per session (0 = ORT default: one per "
        "core). 'auto' chooses per model version at load from its batch-1 call, timed on 1 "
        "thread and on every core this process may use (its affinity mask or cgroup CPU "
        "limit, divided by workers): a model that takes at least 0.5 ms and runs at least "
        "1.1x faster on every core gets them all for a batch that runs alone (a lone request "
        "uses the whole machine) and, under load, runs one-thread batches side by side on a "
        "second session; any other gets 1 thread and runs its batches side by side "
        "(inference_workers). GET /models shows each version's choice and why.",
    )
    intra_op_spinning: bool = Field(
        False,
        description="Let ORT's intra-op threads spin-wait for work after each run (ORT's own "
        "default). Off by default: spinning pools of many sessions burn the cores the event "
        "loop and the other models need; on only helps one big model on dedicated cores.",
    )
    inference_workers: InferenceWorkers = Field(
        AUTO,
        description="Batches run at the same time per model version (its inference threads). "
        "'auto': the cores this process may use (cores / workers), one batch per core (a big "
        "model's batches beside another run on one thread each). However many versions are "
        "busy, their batches together hold at most the process's cores at once (a shared, "
        "fair core budget).",
    )
    inline_inference_max_ms: float = Field(
        2.0,
        ge=0,
        description="A model version whose batch-1 call, timed at start-up, takes at most this "
        "runs a lone request (nothing queued, running or arriving) on the event loop instead of "
        "handing it to its inference thread and back (two thread wake-ups, ~0.2-0.3 ms on a "
        "VM); 0 turns it off. A request arriving meanwhile waits at most this long, as it would "
        "behind a batch on the inference thread.",
    )
    batching: bool = Field(
        True, description="Merge concurrent requests into batches; off runs each request alone."
    )
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Most inputs (images) one batch sent to ONNX Runtime holds."
    )
    max_queue_delay_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="Longest a partial batch waits for more inputs after its first input was "
        "queued; it waits only while other requests are still being read or decoded.",
    )
    max_queue_size: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Most inputs waiting per model; beyond it requests get 503 with Retry-After.",
    )
    request_timeout_ms: float = Field(
        10_000,
        gt=0,
        description="Deadline of a prediction from its arrival (reading, decoding, queueing and "
        "inference included); an answer not ready by then is 504.",
    )
    retry_after_s: int = Field(
        1, ge=0, description="Retry-After header (seconds) sent with every 503 and 504."
    )
    max_in_flight: int | None = Field(
        None,
        ge=0,
        description="Most /predict requests one process handles at once; beyond it 503 with "
        "Retry-After before the body is read, so overload is shed at the door instead of "
        "queueing on the event loop and holding memory. Default: 128 per core this process may "
        "use (256 on 2 cores), which bounds a process's request memory at about that many "
        "bodies of max_body_bytes; 0 = no limit.",
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Longest a request body may take to arrive, from the request's arrival; a "
        "slower client (e.g. a slowloris sending a byte a second) gets 408 and its connection "
        "is closed, so it cannot hold an in-flight slot.",
    )
    shutdown_grace_s: int = Field(
        25,
        ge=1,
        le=3600,
        description="On SIGTERM: how long accepted requests may take to finish before the "
        "process exits anyway. Shorter than the orchestrator's kill timeout (Kubernetes' "
        "terminationGracePeriodSeconds, 30 s by default).",
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="How the served models change at run time: 'none' (only a restart), "
        "'explicit' (the v2 repository API: POST /v2/repository/models/{name}/load and "
        "/unload, with the API key), 'poll' (the service watches the repository folder and "
        "loads, reloads and unloads what changed, once a change has held still for two polls).",
    )
    repository_poll_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="Seconds between two looks at the repository folder in 'poll' mode. A "
        "change is applied once two looks in a row see it the same (a half-copied file is "
        "never loaded: a version loads only when its file matches its card's sha256).",
    )
    startup_models: str = Field(
        "*",
        description="With model_control_mode 'explicit': the models loaded at start-up, "
        "comma-separated, or '*' for every model of the repository (Triton's --load-model). "
        "The others are listed by POST /v2/repository/index as unloaded until a "
        "POST /v2/repository/models/{name}/load. Other modes serve the whole folder: only '*'.",
    )
    version_policy: str = Field(
        "latest:1",
        pattern=VERSION_POLICY.pattern,
        description="Which versions of each model are served, as Triton has it: 'latest:N' "
        "(the N highest version numbers that load), 'all', or 'specific:1,3'. "
        "'name:version' selects a served version; a name alone, the newest.",
    )
    model_version_policies: dict[str, str] = Field(
        default_factory=dict,
        description="Per-model version policies that override version_policy, as JSON: "
        '\'{"cifar10-kd-wrn-16-1": "all"}\'.',
    )
    api_key: SecretStr | None = Field(
        None,
        description="Key that the requests changing what is served (v2 load and unload) must "
        "send as 'Authorization: Bearer <key>'. Unset: those requests are refused (403), never "
        "open. Reads (inference, metadata, index) need no key.",
    )
    triton_metric_names: bool = Field(
        True,
        description="/metrics also carries Triton's metric names (nv_inference_request_success, "
        "nv_inference_queue_duration_us and the rest, per model and version), so that "
        "dashboards and alerts written for Triton work unchanged; derived at each scrape from "
        "the service's own metrics, as the statistics extension is.",
    )
    agreement_sample_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of answered requests re-run, off the request's path, through the "
        "model's reference (its teacher when served) to measure live agreement without labels; "
        "a sample is taken only when the reference's queue is under a quarter full. 0 = off.",
    )
    agreement_reference: str | None = Field(
        None,
        description="Reference model for agreement when a model's card names no served teacher "
        "(default: the most accurate model with the same labels and input).",
    )
    strict_models: bool = Field(
        False,
        description="Refuse to start (exit status 2) when any model version cannot be loaded. "
        "Off by default: a corrupt file or a card that does not match its ONNX graph skips that "
        "version with a one-line error, and the others are served.",
    )
    max_loop_wait_ms: float | None = Field(
        None,
        gt=0,
        description="A /predict request that waited longer than this for the event loop after "
        "arriving is refused at once (503 + Retry-After, body unread): the loop is saturated and "
        "admitting it would make every admitted request late. Default: request_timeout_ms / 4.",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; checked while the body streams in (413).",
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest declared width*height of an image; bigger ones are refused "
        "before decoding (decompression-bomb guard, 413).",
    )
    max_decoded_pixels: int = Field(
        16_777_216,
        ge=1,
        description="Largest width*height an image may be decoded at, checked before decoding "
        "(413): it bounds the memory one image costs (docs/guarantees.md). A baseline JPEG far "
        "larger than the model's input is decoded at 1/2, 1/4 or 1/8 of its size and counts at "
        "that size; PNG, TIFF, WebP, GIF, BMP and progressive JPEGs count at their full size.",
    )
    max_inputs_per_request: int = Field(
        32, ge=1, description="Most images or tensors one request may carry (413 beyond)."
    )
    default_top_k: int = Field(5, ge=1, description="Predictions per input when top_k is absent.")
    warmup_runs: int = Field(
        3, ge=0, le=1000, description="Inference runs per model version before it is ready."
    )
    routing_headroom: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A model meets a request's latency_budget_ms while its predicted p99 is "
        "within this share of the budget: the router leaves a model before its p99 reaches the "
        "budget, not after, and keeps room for what it cannot see (the client's side of the "
        "connection). 1 routes up to the budget itself.",
    )
    latency_window: int = Field(
        1024,
        ge=16,
        description="Recent requests per model version behind the live p50/p99 in /models and "
        "the router's predicted p99.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service and uvicorn."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Logs as text, or 'json': one JSON object per line (time, level, logger, "
        "message; an access record's client, method, path, status; an exception's traceback) "
        "for a log pipeline, uvicorn's records included.",
    )
    access_log: bool = Field(
        False, description="uvicorn access log (off: keeps the hot path lean)."
    )
    keep_alive_s: int = Field(
        75,
        gt=0,
        le=3600,
        description="Seconds an idle keep-alive connection is kept open (uvicorn's default: 5). "
        "Longer than the idle timeout of the proxies and load balancers in front (nginx and "
        "cloud load balancers: 60 s), so that the server never closes a connection at the "
        "moment a client reuses it: that race loses the request with no answer at all.",
    )

    @property
    def startup_model_names(self) -> frozenset[str] | None:
        """The models to load at start-up, or None for every model of the repository."""
        if self.startup_models.strip() == "*":
            return None
        return frozenset(n.strip() for n in self.startup_models.split(",") if n.strip())

    def policy_for(self, model: str) -> str:
        """The version policy of one model."""
        return self.model_version_policies.get(model, self.version_policy)

    @property
    def in_flight_limit(self) -> int:
        """max_in_flight, or its default sized from the cores this process may use (0 = none)."""
        if self.max_in_flight is not None:
            return self.max_in_flight
        return IN_FLIGHT_PER_CORE * usable_cores()

    @property
    def loop_wait_limit_ms(self) -> float:
        """max_loop_wait_ms, or its default of a quarter of the request timeout."""
        if self.max_loop_wait_ms is not None:
            return self.max_loop_wait_ms
        return self.request_timeout_ms / 4.0

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = self.startup_model_names
        if names is not None and self.model_control_mode != "explicit":
            raise ValueError(
                f"startup_models {self.startup_models!r} needs model_control_mode 'explicit' "
                f"(with {self.model_control_mode!r} the whole repository folder is served)"
            )
        if names is not None and not names:
            raise ValueError("startup_models names no model: give names, comma-separated, or '*'")
        for model, policy in self.model_version_policies.items():
            if not VERSION_POLICY.match(policy):
                raise ValueError(
                    f"model_version_policies[{model!r}]: {policy!r} is not 'all', 'latest:N' "
                    "or 'specific:V,...'"
                )
        if self.batching and self.max_inputs_per_request > self.max_batch_size:
            raise ValueError(
                f"max_inputs_per_request ({self.max_inputs_per_request}) must not exceed "
                f"max_batch_size ({self.max_batch_size}) when batching is on"
            )
        if self.max_queue_size < self.max_inputs_per_request:
            raise ValueError(
                f"max_queue_size ({self.max_queue_size}) must be at least "
                f"max_inputs_per_request ({self.max_inputs_per_request})"
            )
        return self
