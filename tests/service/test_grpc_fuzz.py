"""No gRPC call a client can make is answered as a server fault: Hypothesis writes
ModelInferRequest messages (and bytes that are none) for a real uvicorn with its gRPC endpoint;
every answer is a result or a client-error status, and the server serves on."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.service.conftest import png_bytes
from tests.support.server import free_port, running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PNG = png_bytes(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
# What a server fault looks like in gRPC; every other status is an answer to the client.
FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
DATATYPES = ["FP32", "FP64", "FP16", "BF16", "BYTES", "UINT8", "INT8", "INT64", "UINT64", "BOOL"]
PARAMETER_KEYS = [
    "latency_budget_ms",
    "min_accuracy",
    "fallback",
    "family",
    "classification",
    "binary_data",
    "shared_memory_region",
    "triton_enable_empty_final_response",
]


@pytest.fixture(scope="module")
def channel(digits_repo: Path) -> Iterator[grpc.Channel]:
    port = free_port()
    env = {"ROCKETSERVE_GRPC_PORT": str(port), "ROCKETSERVE_LOG_LEVEL": "critical"}
    with running_service(digits_repo, env), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch


def parameter(draw: Any, target: Any) -> None:
    kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param"]))
    value = {
        "bool_param": st.booleans(),
        "int64_param": st.integers(-(2**63), 2**63 - 1),
        "string_param": st.text(max_size=12),
        "double_param": st.floats(allow_nan=True, allow_infinity=True),
    }[kind]
    setattr(target, kind, draw(value))


def often(common: Any, *rare: Any) -> Any:
    """``common`` four times in five, else one of ``rare``: many drawn requests get past the
    first checks, so the deeper ones are reached too (and some are answered)."""
    return st.sampled_from([common] * 4 * len(rare) + list(rare))


ITEM_BYTES = {"FP32": 4, "FP64": 8, "FP16": 2, "UINT8": 1, "INT8": 1, "INT64": 8, "BOOL": 1}


@st.composite
def infer_requests(draw: Any) -> Any:
    message = service_pb2.ModelInferRequest(
        model_name=draw(often("digits-logreg", "digits-slow", "auto", "nope", "")),
        model_version=draw(often("", "2", "1", "9", "x", "-1", "1" * 25)),
        id=draw(st.text(max_size=8)),
    )
    for key in draw(st.lists(st.sampled_from(PARAMETER_KEYS), max_size=3, unique=True)):
        parameter(draw, message.parameters[key])
    raw = draw(st.booleans())
    for _ in range(draw(often(1, 0, 2))):
        datatype = draw(often("FP32", "BYTES", "FP32", *DATATYPES, "", "fp32"))
        if draw(often(True, False)):  # well formed
            shape = (
                [draw(often(1, 0, 2, 3, 4)), 1, 8, 8]
                if datatype != "BYTES"
                else [draw(often(1, 0, 2, 3))]
            )
        else:
            dims = st.integers(-3, 70) | st.sampled_from([2**31, 2**40, 2**62, -(2**62)])
            shape = draw(st.lists(dims, max_size=5))
        count = 1
        for d in shape:
            count *= d
        tensor = message.inputs.add(
            name=draw(often("input", "", "x")), datatype=datatype, shape=shape
        )
        if draw(often(False, True)):
            parameter(draw, tensor.parameters[draw(st.sampled_from(PARAMETER_KEYS))])
        exact = 0 <= count <= 1024 and draw(often(True, False))
        if datatype == "BYTES":
            items = st.sampled_from([PNG, PNG[:30], b"\xff\xd8\xff", b""]) | st.binary(max_size=40)
            elements = draw(
                st.lists(items, min_size=count if exact else 0, max_size=count if exact else 4)
            )
            if raw:
                message.raw_input_contents.append(
                    b"".join(struct.pack("<I", len(e)) + e for e in elements)
                    if draw(st.booleans())
                    else draw(st.binary(max_size=64))
                )
            else:
                tensor.contents.bytes_contents.extend(elements)
        elif raw:
            size = count * ITEM_BYTES.get(datatype, 4) if exact else draw(st.integers(0, 600))
            message.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        else:
            fill = draw(often("fp32", "fp64", "int", "int64", "bytes", "bool", "none"))
            n = count if exact else draw(st.integers(0, 200))
            if fill == "fp32":
                values = st.floats(width=32, allow_nan=True, allow_infinity=True)
                tensor.contents.fp32_contents.extend(draw(st.lists(values, min_size=n, max_size=n)))
            elif fill == "fp64":
                tensor.contents.fp64_contents.extend(
                    draw(st.lists(st.floats(), min_size=n, max_size=n))
                )
            elif fill == "int":
                ints = st.integers(-(2**31), 2**31 - 1)
                tensor.contents.int_contents.extend(draw(st.lists(ints, min_size=n, max_size=n)))
            elif fill == "int64":
                tensor.contents.int64_contents.extend([draw(st.integers(-(2**63), 2**63 - 1))] * n)
            elif fill == "bytes":
                tensor.contents.bytes_contents.extend([PNG] * min(n, 4))
            elif fill == "bool":
                tensor.contents.bool_contents.extend([True] * n)
    for _ in range(draw(often(0, 1, 2))):
        output = message.outputs.add(name=draw(often("logits", "x", "")))
        if draw(st.booleans()):
            parameter(draw, output.parameters[draw(st.sampled_from(PARAMETER_KEYS))])
    return message


def check(call: Any) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() not in FAULTS, f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(message=infer_requests())
def test_no_infer_request_is_a_server_fault(channel: grpc.Channel, message: Any) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    check(lambda: stub.ModelInfer(message, timeout=30))


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    method=st.sampled_from(["ModelInfer", "ModelMetadata", "ModelConfig", "RepositoryIndex"]),
    body=st.binary(max_size=200),
)
def test_bytes_that_are_no_message_are_a_client_error(
    channel: grpc.Channel, method: str, body: bytes
) -> None:
    call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
    check(lambda: call(body, timeout=30))


def test_the_server_serves_on_after_the_fuzzing(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
    request = service_pb2.ModelInferRequest(model_name="digits-logreg")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    request.raw_input_contents.append(b"\0" * 256)
    assert len(stub.ModelInfer(request).raw_output_contents[0]) == 40
