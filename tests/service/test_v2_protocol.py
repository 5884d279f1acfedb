"""The Open Inference Protocol v2 spoken to a real uvicorn by the real client, tritonclient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.contract.model_card import model_file, read_manifest
from service.http.v2_config import model_config, version_policy
from service.settings import Settings
from tests.service.conftest import png_bytes
from tests.support.server import running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(digits_repo: Path) -> Iterator[tuple[str, str]]:
    """The service on the digits repository, with the repository API on; (url, host:port)."""
    env = {
        "ROCKETSERVE_MODEL_CONTROL_MODE": "explicit",
        "ROCKETSERVE_API_KEY": KEY,
        "ROCKETSERVE_VERSION_POLICY": "all",
        "ROCKETSERVE_LOG_LEVEL": "warning",
    }
    with running_service(digits_repo, env) as (url, _):
        yield url, url.removeprefix("http://")


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[object]:
    c = httpclient.InferenceServerClient(server[1])
    yield c
    c.close()


def reference(repo: Path, name: str, version: int, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime alone on the served file: the logits every answer must equal."""
    card = read_manifest(repo / name)
    session = ort.InferenceSession(
        str(model_file(repo / name, version)), providers=["CPUExecutionProvider"]
    )
    return session.run([card.output.name], {card.input.name: x})[0]


def tensor(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=(n, 1, 8, 8)).astype(np.float32)


def test_health_and_metadata(client: object) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "rocketserve"
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("digits-logreg")
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"][0]["datatype"] == "FP32" and model["outputs"][0]["shape"] == [-1, 10]
    assert client.get_model_metadata("digits-logreg", "1")["name"] == "digits-logreg"
    assert client.is_model_ready("digits-logreg") and client.is_model_ready("digits-logreg", "1")
    assert not client.is_model_ready("nope")


def test_the_model_configuration_is_what_tritons_image_client_reads(client: object) -> None:
    """Triton's image_client example takes the batch axis from the configuration's
    max_batch_size and the pixel layout from its input format, beside the metadata: the checks
    it makes hold, and max_batch_size is the most inputs a request may carry."""
    meta = client.get_model_metadata("digits-logreg")
    config = client.get_model_config("digits-logreg")
    assert client.get_model_config("digits-logreg", "1")["name"] == "digits-logreg"
    assert "model_configuration" in client.get_server_metadata()["extensions"]
    # image_client's parse_model: one input and output, FP32 logits, a vector per input,
    # [batch, C, H, W] in the metadata when max_batch_size > 0, an NCHW or NHWC input format
    assert len(meta["inputs"]) == len(meta["outputs"]) == len(config["input"]) == 1
    assert meta["outputs"][0]["datatype"] == "FP32"
    limit = config["max_batch_size"]
    assert limit == Settings.model_fields["max_inputs_per_request"].default
    assert len(meta["inputs"][0]["shape"]) == 1 + len(config["input"][0]["dims"]) == 4
    assert config["input"][0] == {
        "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 8, 8]
    }  # fmt: skip
    assert config["output"][0]["dims"] == [10] and config["output"][0]["data_type"] == "TYPE_FP32"
    assert config["name"] == "digits-logreg" and config["platform"] == "onnxruntime_onnx"
    assert config["version_policy"] == {"all": {}}  # ROCKETSERVE_VERSION_POLICY=all
    batching = config["dynamic_batching"]
    delay_ms = Settings.model_fields["max_queue_delay_ms"].default
    assert batching["max_queue_delay_microseconds"] == round(delay_ms * 1000)
    queue = Settings.model_fields["max_queue_size"].default
    assert config["parameters"]["max_queue_inputs"] == {"string_value": str(queue)}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] >= 1
    # max_batch_size is what it says: that many inputs are answered, one more is refused
    for n, status in ((limit, None), (limit + 1, "413")):
        inp = httpclient.InferInput("input", [n, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(tensor(n))
        if status is None:
            assert client.infer("digits-logreg", [inp]).as_numpy("logits").shape == (n, 10)
            continue
        with pytest.raises(InferenceServerException) as caught:
            client.infer("digits-logreg", [inp])
        assert caught.value.status() == status and f"at most {limit} inputs" in str(caught.value)
    for name, version in (("nope", ""), ("digits-logreg", "9")):
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_config(name, version)
        assert unknown.value.status() == "404"


def _config(settings: Settings, provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """The configuration of a CIFAR-10-shaped version served with ``settings``."""
    card = SimpleNamespace(
        name="m",
        input=SimpleNamespace(name="input", dtype="float16", shape=(3, 32, 32)),
        output=SimpleNamespace(name="logits"),
        labels=[str(i) for i in range(10)],
    )
    served = SimpleNamespace(
        card=card,
        layout=SimpleNamespace(inference_workers=3, intra_op_threads=2),
        runtime=SimpleNamespace(provider=provider),
    )
    return model_config(served, settings)  # type: ignore[arg-type]


def test_the_configuration_follows_the_settings(tmp_path: Path) -> None:
    on = _config(Settings(model_repository=tmp_path, version_policy="latest:2"))
    assert on["version_policy"] == {"latest": {"num_versions": 2}}
    assert on["input"][0]["data_type"] == "TYPE_FP16" and on["input"][0]["dims"] == [3, 32, 32]
    assert on["instance_group"] == [{"name": "m", "kind": "KIND_CPU", "count": 3, "gpus": []}]
    assert on["parameters"]["intra_op_thread_count"] == {"string_value": "2"}
    assert on["parameters"]["request_timeout_ms"] == {"string_value": "10000"}
    assert "dynamic_batching" in on and "max_inputs_per_batch" in on["parameters"]
    off = _config(
        Settings(
            model_repository=tmp_path,
            batching=False,
            max_inputs_per_request=64,
            model_version_policies={"m": "specific:3,1"},
        ),
        provider="CUDAExecutionProvider",
    )
    assert "dynamic_batching" not in off and "max_inputs_per_batch" not in off["parameters"]
    assert off["max_batch_size"] == 64
    assert off["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert off["instance_group"][0]["kind"] == "KIND_GPU" and off["instance_group"][0]["gpus"] == [
        0
    ]


def test_version_policies_read_as_tritons() -> None:
    assert version_policy("all") == {"all": {}}
    assert version_policy("latest:2") == {"latest": {"num_versions": 2}}
    assert version_policy("specific:3,1") == {"specific": {"versions": [1, 3]}}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_onnx_runtime(client: object, digits_repo: Path, binary: bool) -> None:
    x = tensor(3)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    meta = client.get_model_metadata("digits-logreg")
    out_name = meta["outputs"][0]["name"]
    outputs = None if binary else [httpclient.InferRequestedOutput(out_name, binary_data=False)]
    result = client.infer("digits-logreg", [inp], outputs=outputs)
    got = result.as_numpy(out_name)
    np.testing.assert_allclose(
        got, reference(digits_repo, "digits-logreg", 2, x), rtol=1e-5, atol=1e-5
    )
    assert result.get_response()["model_version"] == "2"
    pinned = client.infer("digits-logreg", [inp], model_version="1").as_numpy(out_name)
    np.testing.assert_allclose(
        pinned, reference(digits_repo, "digits-logreg", 1, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests_as_tritonclient_sends_them(
    client: object, digits_repo: Path, compression: str
) -> None:
    x = tensor(4, seed=2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(  # type: ignore[attr-defined]
        "digits-logreg", [inp], request_compression_algorithm=compression
    )
    np.testing.assert_allclose(
        result.as_numpy("logits"),
        reference(digits_repo, "digits-logreg", 2, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_clients_timeout_is_the_requests_deadline(
    client: object, server: tuple[str, str]
) -> None:
    """``infer(timeout=...)`` (Triton's ``parameters.timeout``, microseconds): a request not
    answered within it is a 504, as one past the server's own deadline is; a far one changes
    nothing; a timeout that is no whole number of microseconds is named in a 400."""
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(tensor(1))
    far = client.infer("digits-logreg", [inp], timeout=10_000_000)  # type: ignore[attr-defined]
    assert far.as_numpy("logits").shape == (1, 10)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-logreg", [inp], timeout=1)  # type: ignore[attr-defined]
    assert caught.value.status() == "504" and "deadline" in str(caught.value)
    data = tensor(1).ravel().tolist()
    for bad in (-5, "soon", 1.5, True):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                            "data": data}], "parameters": {"timeout": bad}}  # fmt: skip
        reply = httpx.post(f"{server[0]}/v2/models/digits-logreg/infer", json=body)
        assert reply.status_code == 400 and "parameters.timeout" in reply.json()["error"], bad


def test_sequence_and_priority_parameters_are_answered_as_triton_answers_them(
    client: object,
) -> None:
    """``infer(sequence_id=..., priority=...)`` to a model without sequence batching or
    priority levels: Triton answers each request on its own, so the answer is the plain one."""
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(tensor(1))
    plain = client.infer("digits-logreg", [inp]).as_numpy("logits")  # type: ignore[attr-defined]
    for kw in (
        {"sequence_id": 7, "sequence_start": True},
        {"sequence_id": "user-3"},
        {"priority": 2},
    ):
        got = client.infer("digits-logreg", [inp], **kw).as_numpy("logits")  # type: ignore[attr-defined]
        np.testing.assert_array_equal(got, plain)


def test_compressed_requests_and_answers_as_tritonclient_asks(
    client: object, digits_repo: Path
) -> None:
    """``request_compression_algorithm`` / ``response_compression_algorithm``: the binary answer
    compressed (long enough to be), decompressed by the client, equals ONNX Runtime's."""
    x = tensor(32, seed=5)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    want = reference(digits_repo, "digits-logreg", 2, x)
    for coding in ("gzip", "deflate"):
        result = client.infer(  # type: ignore[attr-defined]
            "digits-logreg",
            [inp],
            request_compression_algorithm=coding,
            response_compression_algorithm=coding,
        )
        np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-5)


def test_classification_extension(client: object, digits_repo: Path) -> None:
    x = tensor(2, seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out_name = client.get_model_metadata("digits-logreg")["outputs"][0]["name"]
    out = httpclient.InferRequestedOutput(out_name, class_count=3)
    top = client.infer("digits-logreg", [inp], outputs=[out]).as_numpy(out_name)
    logits = reference(digits_repo, "digits-logreg", 2, x)
    assert top.shape == (2, 3)
    for row, expected in zip(top, logits, strict=True):
        parsed = [item.decode().split(":") for item in row]
        assert [int(i) for _, i, _ in parsed] == np.argsort(-expected)[:3].tolist()
        assert [label for _, _, label in parsed] == [str(int(i)) for _, i, _ in parsed]
        np.testing.assert_allclose(
            [float(v) for v, _, _ in parsed], np.sort(expected)[::-1][:3], rtol=1e-4
        )


def test_images_as_bytes_like_predict(client: object, server: tuple[str, str]) -> None:
    image = png_bytes(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    inp = httpclient.InferInput("input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image], dtype=np.object_))
    out_name = client.get_model_metadata("digits-logreg")["outputs"][0]["name"]
    out = httpclient.InferRequestedOutput(out_name, class_count=1)
    top = client.infer("digits-logreg", [inp], outputs=[out]).as_numpy(out_name)
    answer = httpx.post(
        server[0] + "/predict", content=image, headers={"content-type": "image/png"}
    ).json()
    assert top[0][0].decode().split(":")[2] == answer["predictions"][0][0]["label"]


def test_errors_are_v2_errors(client: object, server: tuple[str, str]) -> None:
    inp = httpclient.InferInput("input", [1, 1, 8, 7], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 1, 8, 7), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-logreg", [inp])
    assert (
        caught.value.status() == "400"
        and "does not match the model's [-1, 1, 8, 8]" in caught.value.message()
    )
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"
    r = httpx.post(server[0] + "/v2/models/digits-logreg/versions/9/infer", json={"inputs": []})
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = httpx.post(
        server[0] + "/v2/models/digits-logreg/infer",
        content=b"{",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_repository_index_load_and_unload(client: object, server: tuple[str, str]) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m.get("version")) for m in index} >= {
        ("digits-logreg", "1"),
        ("digits-slow", "1"),
    }
    with pytest.raises(InferenceServerException) as caught:
        client.unload_model("digits-slow")  # no key
    assert caught.value.status() == "401"
    client.unload_model("digits-slow", headers=AUTH)
    assert not client.is_model_ready("digits-slow")
    unloaded = [m for m in client.get_model_repository_index() if m["name"] == "digits-slow"]
    assert unloaded == [  # each version of the folder, as Triton lists an unloaded model
        {"name": "digits-slow", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    ready_only = httpx.post(f"{server[0]}/v2/repository/index", json={"ready": True})
    assert "digits-slow" not in {m["name"] for m in ready_only.json()}
    assert {m["state"] for m in ready_only.json()} == {"READY"}
    # a load body's parameters are an object or nothing
    for parameters in ([], False, "x"):
        r = httpx.post(
            server[0] + "/v2/repository/models/digits-slow/load",
            json={"parameters": parameters},
            headers=AUTH,
        )
        assert r.status_code == 400 and "'parameters' must be an object" in r.json()["error"]
    # Triton's load overrides (config, files) are refused, not silently ignored
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("digits-slow", headers=AUTH, config='{"max_batch_size": 1}')
    assert caught.value.status() == "400" and "['config'] are not supported" in str(caught.value)
    assert not client.is_model_ready("digits-slow")
    client.load_model("digits-slow", headers=AUTH)
    assert client.is_model_ready("digits-slow")
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(tensor(1))
    assert client.infer("digits-slow", [inp]).get_response()["model_name"] == "digits-slow"


def test_what_the_server_does_not_offer_is_a_clear_404(
    client: object, server: tuple[str, str]
) -> None:
    for call in (
        lambda: client.get_trace_settings(),  # type: ignore[attr-defined]
        lambda: client.update_trace_settings("digits-logreg", {"trace_level": ["TIMESTAMPS"]}),  # type: ignore[attr-defined]
        lambda: client.get_log_settings(),  # type: ignore[attr-defined]
        lambda: client.update_log_settings({"log_verbose_level": 1}),  # type: ignore[attr-defined]
        lambda: client.get_system_shared_memory_status(),  # type: ignore[attr-defined]
        lambda: client.register_system_shared_memory("r", "/key", 64),  # type: ignore[attr-defined]
        lambda: client.unregister_cuda_shared_memory(),  # type: ignore[attr-defined]
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "404" and "is not supported" in str(caught.value)
    extensions = client.get_server_metadata()["extensions"]  # type: ignore[attr-defined]
    assert not {"trace", "logging", "system_shared_memory"} & set(extensions)
    # a tensor in a shared-memory region is refused, not read as missing or answered inline
    inp = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    inp.set_shared_memory("r", 256)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-logreg", [inp])  # type: ignore[attr-defined]
    assert caught.value.status() == "400" and "shared-memory" in str(caught.value)
    data = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
    data.set_data_from_numpy(tensor(1))
    out = httpclient.InferRequestedOutput("logits")
    out.set_shared_memory("r", 40)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-logreg", [data], outputs=[out])  # type: ignore[attr-defined]
    assert caught.value.status() == "400" and "shared_memory_region" in str(caught.value)
    twice = [httpclient.InferRequestedOutput("logits"), httpclient.InferRequestedOutput("logits")]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("digits-logreg", [data], outputs=twice)  # type: ignore[attr-defined]
    assert caught.value.status() == "400" and "more than once" in str(caught.value)
    url = server[0]
    # KServe's clients read the health bodies; Triton's the status; a trailing slash is no route
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    slash = httpx.get(url + "/v2/models/digits-logreg/")
    assert slash.status_code == 404 and set(slash.json()) == {"error"}
    # the registry's name:version is not a v2 model name; a path of two segments names no model
    assert httpx.get(url + "/v2/models/digits-logreg:1").status_code == 404
    body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                        "data": [0.0] * 64}]}  # fmt: skip
    r = httpx.post(url + "/v2/models/digits-logreg:1/infer", json=body)
    assert r.status_code == 404 and "unknown model 'digits-logreg:1'" in r.json()["error"]
    r = httpx.post(url + "/v2/models/a%2Fb/infer", json=body)
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = httpx.post(url + "/v2/repository/index", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_repository_api_is_refused_without_a_configured_key(digits_repo: Path) -> None:
    with running_service(digits_repo, {"ROCKETSERVE_MODEL_CONTROL_MODE": "explicit"}) as (url, _):
        r = httpx.post(url + "/v2/repository/models/digits-slow/unload", headers=AUTH)
        assert r.status_code == 403 and "ROCKETSERVE_API_KEY" in r.json()["error"]
        assert httpx.post(url + "/v2/repository/index").status_code == 200
