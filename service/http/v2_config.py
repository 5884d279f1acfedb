"""Triton's model configuration of a served version (``GET /v2/models/{name}/config``).

Triton's clients read it beside the metadata: its ``image_client`` example, for one, takes the
batch axis from ``max_batch_size`` and the pixel layout from the input's ``format``. It is
built from the version's card, the settings and the layout chosen at load, in the JSON form
Triton answers with (``ModelConfig``, field names as in ``config.pbtxt``), and describes what
this server does: ``max_batch_size`` is the most inputs one request may carry
(``ROCKETSERVE_MAX_INPUTS_PER_REQUEST``); ``dynamic_batching`` is there while batching is on, with
its queue delay; ``instance_group`` counts the inference workers of the worker process that
answers. Limits whose meaning differs from Triton's fields of the same purpose are in
``parameters`` under names of their own (the queue counts inputs, the deadline runs from arrival
to answer). It is read-only: a load request's ``config`` override is refused.
"""

from __future__ import annotations

from typing import Any

from service.inference.session import CUDA
from service.repository.registry import ServedModel
from service.settings import Settings, parse_version_policy

PLATFORM = "onnxruntime_onnx"
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def version_policy(policy: str) -> dict[str, Any]:
    """A policy setting ('all', 'latest:N', 'specific:A,B') as Triton's version_policy."""
    kind, numbers = parse_version_policy(policy)
    if kind == "all":
        return {"all": {}}
    if kind == "latest":
        return {"latest": {"num_versions": numbers[0]}}
    return {"specific": {"versions": list(numbers)}}


def model_config(served: ServedModel, settings: Settings) -> dict[str, Any]:
    """The configuration of one served version, as Triton gives it."""
    card, layout = served.card, served.layout
    gpu = served.runtime.provider == CUDA
    config: dict[str, Any] = {
        "name": card.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": version_policy(settings.policy_for(card.name)),
        "max_batch_size": settings.max_inputs_per_request,
        "input": [
            {
                "name": card.input.name,
                "data_type": DATA_TYPES[card.input.dtype],
                "format": "FORMAT_NCHW",
                "dims": list(card.input.shape),
            }
        ],
        "output": [
            {
                "name": card.output.name,
                "data_type": "TYPE_FP32",
                "dims": [len(card.labels)],
                "label_filename": "",
            }
        ],
        "instance_group": [
            {
                "name": card.name,
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": layout.inference_workers if layout else 1,
                "gpus": [0] if gpu else [],
            }
        ],
        "default_model_filename": "model.onnx",
        "parameters": {},
    }
    if layout:  # the ONNX Runtime backend's name for it
        config["parameters"]["intra_op_thread_count"] = {
            "string_value": str(layout.intra_op_threads)
        }
    # This server's limits that Triton's fields would misstate: its queue counts inputs, not
    # requests, and its deadline runs from a request's arrival to its answer, not in the queue.
    for key, value in (
        ("max_queue_inputs", settings.max_queue_size),
        ("request_timeout_ms", settings.request_timeout_ms),
    ):
        config["parameters"][key] = {"string_value": f"{value:.15g}"}
    if settings.batching:
        # the most inputs one merged batch holds (ROCKETSERVE_MAX_BATCH_SIZE)
        config["parameters"]["max_inputs_per_batch"] = {
            "string_value": str(settings.max_batch_size)
        }
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
        }
    return config
