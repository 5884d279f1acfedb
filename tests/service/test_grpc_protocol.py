"""The Open Inference Protocol's gRPC service spoken to a real uvicorn by tritonclient.grpc.

The server runs as ``python -m service`` with ``ROCKETSERVE_GRPC_PORT``; every answer is checked
against the same server's REST one or against ONNX Runtime alone on the served file. Calls that
tritonclient does not make (typed ``contents`` instead of raw bytes, a message over the size
limit) are made with Triton's own generated messages and stub, as any other client would.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.grpc import messages
from tests.service.conftest import png_bytes
from tests.service.test_v2_protocol import AUTH, KEY, reference, tensor
from tests.support.cli import ROOT
from tests.support.server import free_port, running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MODEL = "digits-logreg"


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[tuple[str, str]]:
    """The service with its gRPC endpoint and the repository API on; (REST url, gRPC host:port)."""
    port = free_port()
    env = {
        "ROCKETSERVE_GRPC_PORT": str(port),
        "ROCKETSERVE_MODEL_CONTROL_MODE": "explicit",
        "ROCKETSERVE_API_KEY": KEY,
        "ROCKETSERVE_VERSION_POLICY": "all",
        "ROCKETSERVE_MAX_BODY_BYTES": str(64 * 1024),
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(digits_repo, env) as (url, _):
        yield url, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def rest(server: tuple[str, str]) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server[0].removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: tuple[str, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def fp32_input(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_health_metadata_and_configuration_are_the_rest_ones(
    client: grpcclient.InferenceServerClient, rest: httpclient.InferenceServerClient
) -> None:
    """Read into Triton's own messages, the REST answers equal the gRPC ones field for field."""
    assert client.is_server_live() and client.is_server_ready()
    server = json_format.ParseDict(rest.get_server_metadata(), service_pb2.ServerMetadataResponse())
    assert client.get_server_metadata() == server
    for version in ("", "1", "2"):
        meta = client.get_model_metadata(MODEL, version)
        assert meta == json_format.ParseDict(
            rest.get_model_metadata(MODEL, version), service_pb2.ModelMetadataResponse()
        )
        assert list(meta.inputs[0].shape) == [-1, 1, 8, 8] and meta.platform == "onnxruntime_onnx"
        config = client.get_model_config(MODEL, version).config
        assert config == json_format.ParseDict(
            rest.get_model_config(MODEL, version), model_config_pb2.ModelConfig()
        )
        assert config.max_batch_size > 0 and config.input[0].format == config.input[0].FORMAT_NCHW
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready(MODEL, "9")


@pytest.mark.parametrize("version", ["", "1", "2"])
def test_infer_equals_onnx_runtime(
    client: grpcclient.InferenceServerClient, digits_repo: Path, version: str
) -> None:
    x = tensor(5, seed=3)
    result = client.infer(MODEL, [fp32_input(x)], model_version=version, request_id="r-7")
    served = int(version or 2)  # the newest version by default
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(digits_repo, MODEL, served, x), rtol=1e-5, atol=1e-5
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, str(served), "r-7")


def test_typed_contents_are_read_like_raw_bytes(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, digits_repo: Path
) -> None:
    """Triton's clients send raw bytes; KServe's may send the typed contents field instead."""
    x = tensor(2, seed=5)
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="1")
    given = request.inputs.add(name="input", datatype="FP32", shape=[2, 1, 8, 8])
    given.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(logits, reference(digits_repo, MODEL, 1, x), rtol=1e-5, atol=1e-5)
    # FP64 values that are exact in float32 are taken, as over REST
    request.inputs[0].datatype = "FP64"
    request.inputs[0].contents.Clear()
    request.inputs[0].contents.fp64_contents.extend(x.astype(np.float64).ravel().tolist())
    again = stub.ModelInfer(request)
    assert again.raw_output_contents[0] == response.raw_output_contents[0]


def test_a_stream_answers_every_request_and_names_each_error(
    server: tuple[str, str], digits_repo: Path
) -> None:
    """ModelStreamInfer, as tritonclient's streaming API drives it: each request answered in
    the order sent (as Triton answers), a bad one an error in the stream that goes on."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs = {f"s{i}": tensor(1 + i % 2, seed=200 + i) for i in range(12)}
    with grpcclient.InferenceServerClient(server[1]) as streaming:
        streaming.start_stream(callback=lambda result, error: answers.put((result, error)))
        for rid, x in inputs.items():
            streaming.async_stream_infer(MODEL, [fp32_input(x)], request_id=rid)
        streaming.async_stream_infer("nope", [fp32_input(tensor(1))], request_id="bad")
        streaming.async_stream_infer(
            MODEL, [fp32_input(tensor(1))], request_id="last", enable_empty_final_response=True
        )
        got = [answers.get(timeout=30) for _ in range(len(inputs) + 2)]
        streaming.stop_stream()
    order = [r.get_response().id if r is not None else "bad" for r, _ in got]
    assert order == [*inputs, "bad", "last"]
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "unknown model 'nope'" in errors[0].message()
    results = {r.get_response().id: r for r, error in got if error is None}
    assert set(results) == {*inputs, "last"}
    for rid, x in inputs.items():
        np.testing.assert_allclose(
            results[rid].as_numpy("logits"), reference(digits_repo, MODEL, 2, x), atol=1e-5
        )
    for result in results.values():  # one answer a request: each is its last
        assert result.get_response().parameters["triton_final_response"].bool_param


def test_classification_and_images_as_bytes_like_predict(
    client: grpcclient.InferenceServerClient, server: tuple[str, str]
) -> None:
    image = png_bytes(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    inp = grpcclient.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    out = grpcclient.InferRequestedOutput("logits", class_count=3)
    top = client.infer(MODEL, [inp], outputs=[out]).as_numpy("logits")
    answer = httpx.post(
        server[0] + "/predict", content=image, headers={"content-type": "image/png"}
    ).json()
    assert top.shape == (1, 3)
    labels = [entry.decode().split(":")[2] for entry in top[0]]
    assert labels == [p["label"] for p in answer["predictions"][0][:3]]


def test_the_clients_timeout_is_the_requests_deadline(
    client: grpcclient.InferenceServerClient,
) -> None:
    """``infer(timeout=...)`` (the ``timeout`` parameter, microseconds), as over REST."""
    x = fp32_input(tensor(1))
    assert client.infer(MODEL, [x], timeout=10_000_000).as_numpy("logits").shape == (1, 10)
    code, message = status_of(lambda: client.infer(MODEL, [x], timeout=1))
    assert code == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in message, message


def test_routing_by_objective(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer(
        "auto", [fp32_input(tensor(1))], parameters={"latency_budget_ms": 10000.0}
    ).get_response()
    routing = json.loads(result.parameters["routing"].string_param)
    assert routing["chosen"] == f"{result.model_name}:{result.model_version}"
    assert routing["objective"] == {"latency_budget_ms": 10000.0}
    with pytest.raises(InferenceServerException) as caught:
        client.infer("auto", [fp32_input(tensor(1))])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "latency_budget_ms" in caught.value.message()


def status_of(call: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return str(caught.value.status()), str(caught.value.message())


def test_client_mistakes_are_named_and_the_server_serves_on(
    client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    wrong_shape = grpcclient.InferInput("input", [1, 1, 8, 7], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 1, 8, 7), dtype=np.float32))
    code, message = status_of(lambda: client.infer(MODEL, [wrong_shape]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "does not match the model's" in message
    code, message = status_of(lambda: client.infer("nope", [fp32_input(tensor(1))]))
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message
    code, message = status_of(lambda: client.infer(MODEL, [fp32_input(tensor(1))], "9"))
    assert code == "StatusCode.NOT_FOUND" and "has no version '9'" in message
    code, message = status_of(lambda: client.get_model_metadata("nope"))
    assert code == "StatusCode.NOT_FOUND"
    # a message quoting a long name is cut, so that it stays within what clients accept
    code, message = status_of(lambda: client.infer("m" * 20_000, [fp32_input(tensor(1))]))
    assert code == "StatusCode.NOT_FOUND" and message.endswith("(message cut)")
    pixels = grpcclient.InferInput("input", [1, 1, 8, 8], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 1, 8, 8), dtype=np.uint8))
    code, message = status_of(lambda: client.infer(MODEL, [pixels]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "datatype is UINT8" in message
    # what tritonclient never sends: each a named INVALID_ARGUMENT
    bad = service_pb2.ModelInferRequest(model_name=MODEL)
    bad.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    bad.raw_input_contents.append(b"\0" * 12)
    short = grpc_error(lambda: stub.ModelInfer(bad))
    assert short.code() == grpc.StatusCode.INVALID_ARGUMENT and "256 bytes" in short.details()
    bad.raw_input_contents.append(b"")
    extra = grpc_error(lambda: stub.ModelInfer(bad))
    assert "raw_input_contents has 2 entries for 1 inputs" in extra.details()
    half = service_pb2.ModelInferRequest(model_name=MODEL)
    half.inputs.add(
        name="input", datatype="FP16", shape=[1, 1, 8, 8]
    ).contents.fp32_contents.append(1)
    assert (
        "only be sent in raw_input_contents" in grpc_error(lambda: stub.ModelInfer(half)).details()
    )
    nameless = service_pb2.ModelInferRequest(inputs=bad.inputs)
    assert grpc_error(lambda: stub.ModelInfer(nameless)).code() == grpc.StatusCode.INVALID_ARGUMENT
    # over the body limit: gRPC's own refusal, before anything is read
    huge = service_pb2.ModelInferRequest(model_name=MODEL)
    huge.inputs.add(name="input", datatype="FP32", shape=[1024, 1, 8, 8])
    huge.raw_input_contents.append(b"\0" * 1024 * 256)
    assert grpc_error(lambda: stub.ModelInfer(huge)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.infer(MODEL, [fp32_input(tensor(1))]).as_numpy("logits").shape == (1, 10)


def grpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value  # type: ignore[return-value]


def test_what_the_server_does_not_offer_is_unimplemented_with_what_to_do(
    client: grpcclient.InferenceServerClient,
) -> None:
    for call, hint in (
        (lambda: client.get_system_shared_memory_status(), "raw_input_contents"),
        (lambda: client.get_trace_settings(), "GET /metrics"),
        (lambda: client.get_log_settings(), "ROCKETSERVE_LOG_LEVEL"),
    ):
        code, message = status_of(call)
        assert code == "StatusCode.UNIMPLEMENTED" and "is not supported" in message, message
        assert hint in message
    inp = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_shared_memory("r", 256)
    code, message = status_of(lambda: client.infer(MODEL, [inp]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "shared_memory_region" in message


def test_repository_index_load_and_unload(client: grpcclient.InferenceServerClient) -> None:
    names = {(m.name, m.version) for m in client.get_model_repository_index().models}
    assert {(MODEL, "1"), (MODEL, "2"), ("digits-slow", "1")} <= names
    code, _ = status_of(lambda: client.unload_model("digits-slow"))  # no key
    assert code == "StatusCode.UNAUTHENTICATED"
    code, _ = status_of(
        lambda: client.unload_model("digits-slow", headers={"authorization": "Bearer x"})
    )
    assert code == "StatusCode.UNAUTHENTICATED"
    auth = {"authorization": AUTH["Authorization"]}
    client.unload_model("digits-slow", headers=auth)
    assert not client.is_model_ready("digits-slow")
    ready = client.get_model_repository_index(as_json=True)
    assert "digits-slow" in {m["name"] for m in ready["models"]}
    code, message = status_of(lambda: client.load_model("digits-slow", headers=auth, config="{}"))
    assert code == "StatusCode.INVALID_ARGUMENT" and "['config'] are not supported" in message
    client.load_model("digits-slow", headers=auth)
    assert client.is_model_ready("digits-slow")
    result = client.infer("digits-slow", [fp32_input(tensor(1))]).get_response()
    assert result.model_name == "digits-slow"


def test_concurrent_calls_of_both_protocols_are_all_answered(
    client: grpcclient.InferenceServerClient, server: tuple[str, str], digits_repo: Path
) -> None:
    """gRPC and REST calls at once share the model's batcher; every answer is its own input's,
    and the metrics count them all under the model."""

    def metric() -> float:
        text = httpx.get(server[0] + "/metrics").text
        line = f'rocketserve_requests_total{{model="{MODEL}",status="200",version="1"}}'
        return sum(float(r.split()[-1]) for r in text.splitlines() if r.startswith(line))

    before = metric()
    inputs = [tensor(1 + i % 3, seed=100 + i) for i in range(48)]

    def call(i: int) -> np.ndarray:
        x = inputs[i]
        if i % 2:
            return client.infer(MODEL, [fp32_input(x)], "1").as_numpy("logits")
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}]}  # fmt: skip
        answer = http.post(f"{server[0]}/v2/models/{MODEL}/versions/1/infer", json=body).json()
        return np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 10)

    # httpx: tritonclient.http's gevent client is not for threads
    with httpx.Client() as http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(len(inputs))))
    for x, got in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(got, reference(digits_repo, MODEL, 1, x), rtol=1e-5, atol=1e-5)
    assert metric() - before == len(inputs)


def test_a_taken_grpc_port_is_one_clear_line(digits_repo: Path) -> None:
    port = free_port()
    holder = grpc.server(ThreadPoolExecutor(1))
    holder.add_insecure_port(f"127.0.0.1:{port}")
    holder.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service", "--model-repository", str(digits_repo),
             "--grpc-port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        holder.stop(0)
    assert done.returncode == 2
    assert f"cannot listen for gRPC on port {port}" in done.stderr, done.stderr
    same = subprocess.run(
        [sys.executable, "-m", "service", "--model-repository", str(digits_repo),
         "--port", str(port), "--grpc-port", str(port)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same.returncode == 2 and "it is the HTTP port too" in same.stderr, same.stderr


def test_every_worker_process_serves_grpc_on_the_one_port(digits_repo: Path) -> None:
    """With several worker processes each listens on the gRPC port (SO_REUSEPORT): the kernel
    spreads new connections over them, and every call is answered."""
    port = free_port()
    env = {"ROCKETSERVE_WORKERS": "2", "ROCKETSERVE_GRPC_PORT": str(port)}
    with running_service(digits_repo, env) as (_, process):
        for _ in range(8):  # a new connection each: both processes take some
            with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as fresh:
                result = fresh.infer(MODEL, [fp32_input(tensor(1))])
                assert result.as_numpy("logits").shape == (1, 10)
    assert process.stdout is not None
    log = process.stdout.read().decode()
    assert log.count(f"gRPC endpoint on 127.0.0.1:{port}") == 2, log


def test_grpc_health_checking_as_kubernetes_probes_call_it(server: tuple[str, str]) -> None:
    """grpc.health.v1.Health/Check: SERVING for the server and its service, NOT_FOUND for
    another; Watch is refused with what to call instead."""
    with grpc.insecure_channel(server[1]) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=messages.HealthCheckRequest.SerializeToString,
            response_deserializer=messages.HealthCheckResponse.FromString,
        )
        for service in ("", "inference.GRPCInferenceService"):
            answer = check(messages.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == messages.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            check(messages.HealthCheckRequest(service="other"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=messages.HealthCheckRequest.SerializeToString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(watch(messages.HealthCheckRequest(), timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert "call Check" in caught.value.details()  # type: ignore[attr-defined]
