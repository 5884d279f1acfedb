"""service.grpc's messages and error mapping, without a server: what a call carries is read, or
refused with a message that names the problem."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service.errors import BadRequest, NotFound, ServiceError, Unavailable
from service.grpc import messages as pb
from service.grpc.endpoint import guarded, listen_address, status_code, status_message
from service.grpc.infer_messages import read_infer_request
from service.grpc.servicer import Servicer
from service.http.state import ServiceState
from service.observability.metrics import ServiceMetrics
from service.settings import Settings


def request_with(datatype: str, shape: list[int]) -> tuple[pb.ModelInferRequest, Any]:
    message = pb.ModelInferRequest(model_name="m", id="abc")
    return message, message.inputs.add(name="input", datatype=datatype, shape=shape)


def test_raw_and_typed_contents_read_to_the_same_tensor() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    raw, _ = request_with("FP32", [1, 2, 3])
    raw.raw_input_contents.append(x.tobytes())
    typed, given = request_with("FP32", [1, 2, 3])
    given.contents.fp32_contents.extend(x.ravel().tolist())
    for message in (raw, typed):
        request = read_infer_request(message)
        assert request.id == "abc" and request.outputs is None
        np.testing.assert_array_equal(request.inputs[0].array, x)


def test_bytes_elements_raw_and_typed() -> None:
    elements = [b"first", b"", b"third"]
    raw, _ = request_with("BYTES", [3])
    raw.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in elements))
    typed, given = request_with("BYTES", [3])
    given.contents.bytes_contents.extend(elements)
    assert read_infer_request(raw).inputs[0].elements == elements
    assert read_infer_request(typed).inputs[0].elements == elements


def test_parameters_and_outputs_are_read() -> None:
    message, given = request_with("FP32", [1])
    given.contents.fp32_contents.append(1.0)
    message.parameters["latency_budget_ms"].double_param = 2.5
    message.parameters["min_accuracy"].string_param = "0.9"
    out = message.outputs.add(name="logits")
    out.parameters["classification"].int64_param = 3
    request = read_infer_request(message)
    assert request.parameters == {"latency_budget_ms": 2.5, "min_accuracy": "0.9"}
    assert [(o.name, o.classification) for o in request.outputs or []] == [("logits", 3)]


def negative_classification(message: pb.ModelInferRequest, given: Any) -> None:
    given.contents.fp32_contents.append(1)
    message.outputs.add(name="o").parameters["classification"].int64_param = -1


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda m, i: None, "holds 1 elements, the data has 0"),
        (lambda m, i: m.raw_input_contents.extend([b"\0" * 4, b""]), "2 entries for 1 inputs"),
        (lambda m, i: m.raw_input_contents.append(b"\0" * 3), "4 bytes, the data has 3"),
        (
            lambda m, i: (
                m.raw_input_contents.append(b"\0" * 4),
                i.contents.fp32_contents.append(1),
            ),
            "both contents and raw_input_contents",
        ),
        (lambda m, i: i.contents.fp32_contents.extend([1, 2]), "holds 1 elements"),
        (lambda m, i: i.contents.int_contents.append(1), "holds 1 elements, the data has 0"),
        (lambda m, i: setattr(i, "datatype", "BF16"), "BF16 is not supported"),
        (lambda m, i: setattr(i, "datatype", "FP8"), "unknown datatype 'FP8'"),
        (lambda m, i: setattr(i, "name", ""), "input 0 needs a 'name'"),
        (
            lambda m, i: (setattr(i, "datatype", "INT8"), i.contents.int_contents.append(300)),
            "out of range for INT8",
        ),
        (
            lambda m, i: (setattr(i, "datatype", "FP16"), i.contents.fp32_contents.append(1)),
            "FP16 data can only be sent in raw_input_contents",
        ),
        (
            lambda m, i: (
                i.contents.fp32_contents.append(1),
                m.outputs.add(name="o"),
                m.outputs.add(name="o"),
            ),
            "asked for more than once",
        ),
        (negative_classification, "classification must be a count"),
        (
            lambda m, i: i.parameters["shared_memory_region"].__setattr__("string_param", "r"),
            "shared_memory_region",
        ),
    ],
)
def test_every_inconsistency_is_a_named_bad_request(build: Any, words: str) -> None:
    message, given = request_with("FP32", [1])
    build(message, given)
    with pytest.raises(BadRequest) as caught:
        read_infer_request(message)
    assert words in caught.value.message


def test_no_inputs_is_refused() -> None:
    with pytest.raises(BadRequest, match="non-empty list"):
        read_infer_request(pb.ModelInferRequest(model_name="m"))


def test_http_statuses_map_to_grpc_codes() -> None:
    assert status_code(BadRequest("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert status_code(Unavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_code(ServiceError("x", status=418)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(ServiceError("x", status=500)) == grpc.StatusCode.INTERNAL
    assert listen_address("::1", 8001) == "[::1]:8001"
    assert listen_address("0.0.0.0", 8001) == "0.0.0.0:8001"


class Aborted(Exception):
    pass


class FakeContext:
    """What guarded() uses of a ServicerContext: abort, which raises as grpc's does."""

    def __init__(self) -> None:
        self.aborted: tuple[Any, ...] | None = None

    async def abort(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        self.aborted = (code, details, tuple(trailers))
        raise Aborted


def test_errors_become_statuses_and_a_fault_is_internal_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse(request: Any, context: Any) -> Any:
        raise Unavailable("queue full", headers={"Retry-After": "2"})

    async def crash(request: Any, context: Any) -> Any:
        raise RuntimeError("boom")

    async def answer(request: Any, context: Any) -> Any:
        return "fine"

    context = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(guarded("M", refuse, pb.ServerLiveRequest)(b"", context))
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "queue full", (("retry-after", "2"),))
    with pytest.raises(Aborted):
        asyncio.run(guarded("M", crash, pb.ServerLiveRequest)(b"", context))
    assert context.aborted == (grpc.StatusCode.INTERNAL, "internal server error", ())
    assert "unhandled error in gRPC M" in caplog.text and "boom" in caplog.text
    assert asyncio.run(guarded("M", answer, pb.ServerLiveRequest)(b"", FakeContext())) == "fine"
    # bytes that are no message are the client's mistake, not gRPC's INTERNAL
    with pytest.raises(Aborted):
        asyncio.run(guarded("M", answer, pb.ModelInferRequest)(b"\xff\xff\xff", context))
    assert context.aborted[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "the request is not a valid ModelInferRequest message",
    )


def test_infer_calls_refused_at_the_in_flight_limit_are_counted(tmp_path: Path) -> None:
    """As the REST gate counts its refusals: under model "unknown", status 503."""
    state = ServiceState(Settings(model_repository=tmp_path, max_in_flight=2), ServiceMetrics())
    state.predicting = 2
    servicer = Servicer(state)
    with pytest.raises(Unavailable, match="2 requests are in flight"):
        asyncio.run(servicer.ModelInfer(pb.ModelInferRequest(model_name="m"), None))
    servicer.refused(BadRequest("not a message"))
    requests = state.metrics.requests
    assert requests.labels("unknown", "", "503")._value.get() == 1
    assert requests.labels("unknown", "", "400")._value.get() == 1


def test_long_status_messages_are_cut() -> None:
    assert status_message("short") == "short"
    cut = status_message("x" * 100_000)
    assert len(cut) <= 4096 and cut.endswith("(message cut)")
