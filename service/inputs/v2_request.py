"""An Open Inference Protocol (v2, "KServe v2") infer request body read into typed tensors.

The JSON header (``inputs``, ``outputs``, ``parameters``) and, with the binary tensor data
extension, the raw bytes that follow it (``Inference-Header-Content-Length``; each input's
``parameters.binary_data_size``), or a body that is the raw data of the model's only input
(``Inference-Header-Content-Length: 0``). Every inconsistency (datatype, shape, element or byte
count, unreadable JSON) is a 400 that names it; nothing here knows a model, only the protocol.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest
from service.inputs.body import check_json_size

# The protocol's numeric datatypes, little-endian as the binary extension sends them.
NUMERIC_DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
UNSUPPORTED_DATATYPES = frozenset({"BF16"})  # the protocol's, not numpy's
MAX_ELEMENTS = 1 << 26  # no request tensor has more elements than this (64 Mi) before any check


@dataclass
class InferInput:
    """One input tensor: numbers as an array of its datatype, or BYTES elements as a list."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    elements: list[bytes] | None = None


@dataclass
class RequestedOutput:
    """An output the client asked for, and how: binary or JSON, top-K classification."""

    name: str
    binary: bool | None = None  # None: the request's binary_data_output decides
    classification: int = 0


@dataclass
class InferRequest:
    """A parsed infer request."""

    id: str | None = None
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # the request's parameters.binary_data_output
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_infer_request(
    body: bytes, header_length: str | None, raw_input: tuple[str, str, tuple[int, ...]] | None
) -> InferRequest:
    """Read an infer request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None when absent: the
    whole body is JSON). ``raw_input`` is (name, datatype, item shape) of the model's only input,
    used for a body that is that input's raw data (header length 0).
    """
    length = _header_length(header_length, len(body))
    if length == 0:
        if raw_input is None:
            raise BadRequest(
                "a raw body (Inference-Header-Content-Length: 0) needs a model with one input"
            )
        return _raw_request(body, *raw_input)
    header_bytes = body if length is None else body[:length]
    binary = b"" if length is None else body[length:]
    check_json_size(header_bytes)  # refused before parsing, as /predict's JSON bodies are
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the infer request is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # an integer past int()'s digit limit; deep nesting
        raise BadRequest("the infer request JSON holds a number or nesting out of range") from None
    if not isinstance(header, dict):
        raise BadRequest("the infer request must be a JSON object")
    parameters = _object(header.get("parameters"), "parameters")
    request = InferRequest(
        id=_optional_str(header.get("id"), "id"),
        binary_output=_flag(parameters.get("binary_data_output", False), "binary_data_output"),
        parameters=parameters,
    )
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, i, binary, offset)
        request.inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"the body has {len(binary)} bytes of binary tensor data, the inputs declare {offset}"
        )
    if "outputs" in header:
        raw_outputs = header["outputs"]
        if not isinstance(raw_outputs, list):
            raise BadRequest("'outputs' must be a list")
        request.outputs = [_output(raw, i) for i, raw in enumerate(raw_outputs)]
        seen: set[str] = set()
        for output in request.outputs:
            if output.name in seen:
                raise BadRequest(f"output {output.name!r} is asked for more than once")
            seen.add(output.name)
    return request


def _header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdecimal()) or len(value) > 18:
        raise BadRequest(f"Inference-Header-Content-Length {value!r} is not a byte count")
    length = int(value)
    if length > body_length:
        raise BadRequest(
            f"Inference-Header-Content-Length {length} is past the body's end ({body_length} B)"
        )
    return length


def _raw_request(
    body: bytes, name: str, datatype: str, item_shape: tuple[int, ...]
) -> InferRequest:
    dtype = NUMERIC_DATATYPES[datatype]
    per_item = math.prod(item_shape) * dtype.itemsize
    if not body or len(body) % per_item:
        raise BadRequest(
            f"a raw {datatype} body for input {name!r} of item shape {list(item_shape)} must be a "
            f"positive multiple of {per_item} bytes, got {len(body)}"
        )
    n = len(body) // per_item
    array = np.frombuffer(body, dtype=dtype).reshape((n, *item_shape))
    return InferRequest(
        inputs=[InferInput(name, datatype, (n, *item_shape), array=array)], binary_output=True
    )


def _input(raw: Any, index: int, binary: bytes, offset: int) -> tuple[InferInput, int]:
    """One input of the request and the number of binary bytes it took."""
    if not isinstance(raw, dict):
        raise BadRequest(f"input {index} must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"input {index} needs a 'name'")
    datatype = check_datatype(raw.get("datatype"), name)
    shape = check_shape(raw.get("shape"), name)
    parameters = _object(raw.get("parameters"), f"input {name!r} parameters")
    no_shared_memory(parameters, f"input {name!r}")
    size = parameters.get("binary_data_size")
    tensor = InferInput(name, datatype, shape)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a byte count")
        if "data" in raw:
            raise BadRequest(f"input {name!r} has both 'data' and binary_data_size")
        if offset + size > len(binary):
            raise BadRequest(
                f"input {name!r} declares {size} bytes of binary data, only "
                f"{len(binary) - offset} follow the JSON header"
            )
        fill_from_bytes(tensor, binary[offset : offset + size])
        return tensor, size
    if "data" not in raw:
        raise BadRequest(f"input {name!r} has no 'data' and no binary_data_size")
    if datatype == BYTES:
        tensor.elements = _json_bytes_elements(raw["data"], name)
    else:
        tensor.array = _json_numbers(raw["data"], NUMERIC_DATATYPES[datatype], shape, name)
    check_count(tensor)
    return tensor, 0


def check_datatype(datatype: Any, name: str) -> str:
    """An input's datatype, if the protocol has it and this server reads it."""
    if isinstance(datatype, str) and datatype in UNSUPPORTED_DATATYPES:
        raise BadRequest(
            f"input {name!r}: datatype {datatype} is not supported by this server; send the "
            "model's own (GET /v2/models/{name}) or BYTES images"
        )
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in NUMERIC_DATATYPES):
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    return datatype


def fill_from_bytes(tensor: InferInput, chunk: bytes) -> None:
    """Read a tensor's data from its raw bytes (the binary extension's, gRPC's raw contents):
    little-endian numbers, or BYTES elements each after a 4-byte length."""
    if tensor.datatype == BYTES:
        tensor.elements = _bytes_elements(chunk, tensor.name)
    else:
        dtype = NUMERIC_DATATYPES[tensor.datatype]
        expected = math.prod(tensor.shape) * dtype.itemsize
        if len(chunk) != expected:
            raise BadRequest(
                f"input {tensor.name!r}: shape {list(tensor.shape)} of {tensor.datatype} is "
                f"{expected} bytes, the data has {len(chunk)}"
            )
        tensor.array = np.frombuffer(chunk, dtype=dtype).reshape(tensor.shape)
    check_count(tensor)


def check_count(tensor: InferInput) -> None:
    """Its data holds as many elements as its shape."""
    count = math.prod(tensor.shape)
    got = len(tensor.elements) if tensor.elements is not None else int(tensor.array.size)  # type: ignore[union-attr]
    if got != count:
        raise BadRequest(
            f"input {tensor.name!r}: shape {list(tensor.shape)} holds {count} elements, "
            f"the data has {got}"
        )


def check_shape(value: Any, name: str) -> tuple[int, ...]:
    """A shape: at most 8 non-negative dimensions, holding at most MAX_ELEMENTS elements."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    # Each dimension too, not only their product: a zero beside 2**62 holds no element, yet
    # numpy refuses to shape an array so.
    if len(value) > 8 or math.prod(value) > MAX_ELEMENTS or max(value) > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: shape {value} is too large")
    return tuple(value)


def _json_numbers(data: Any, dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> np.ndarray:
    """Flat or nested JSON numbers as an array of ``dtype`` and ``shape``."""
    kind = "b" if dtype.kind == "b" else ("f" if dtype.kind == "f" else "i")
    flat = _flatten(data, name)
    if len(flat) != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} holds {math.prod(shape)} elements, "
            f"'data' has {len(flat)}"
        )
    for value in flat:
        ok = (
            isinstance(value, bool)
            if kind == "b"
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind == "f"
            else isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            raise BadRequest(f"input {name!r}: {value!r} is not a {dtype.name} value")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError, FloatingPointError):
        raise BadRequest(f"input {name!r}: a value is out of range for {dtype.name}") from None
    return array.reshape(shape)


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: 'data' must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 16:
                    raise BadRequest(f"input {name!r}: 'data' is nested too deeply")
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > MAX_ELEMENTS:
                raise BadRequest(f"input {name!r}: 'data' is too large")
        else:
            stack.pop()
    return flat


def _bytes_elements(chunk: bytes, name: str) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then bytes."""
    elements: list[bytes] = []
    at = 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise BadRequest(f"input {name!r}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", chunk, at)
        at += 4
        if at + size > len(chunk):
            raise BadRequest(f"input {name!r}: a BYTES element runs past the data")
        elements.append(chunk[at : at + size])
        at += size
    return elements


def pack_bytes(elements: list[bytes]) -> bytes:
    """BYTES elements as the binary extension (and gRPC's raw contents) carry them."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _json_bytes_elements(data: Any, name: str) -> list[bytes]:
    flat = _flatten(data, name)
    if not all(isinstance(item, str) for item in flat):
        raise BadRequest(f"input {name!r}: BYTES 'data' must hold strings")
    try:
        return [item.encode("utf-8") for item in flat]
    except UnicodeEncodeError:  # legal JSON ("\ud800"), yet no UTF-8 bytes
        raise BadRequest(
            f"input {name!r}: a BYTES string is not valid Unicode text (a lone surrogate)"
        ) from None


def _output(raw: Any, index: int) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest(f"output {index} must be an object with a 'name'")
    parameters = _object(raw.get("parameters"), f"output {raw['name']!r} parameters")
    no_shared_memory(parameters, f"output {raw['name']!r}")
    binary = parameters.get("binary_data")
    if binary is not None:
        binary = _flag(binary, f"output {raw['name']!r}: binary_data")
    k = parameters.get("classification", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise BadRequest(f"output {raw['name']!r}: classification must be a count")
    return RequestedOutput(raw["name"], binary, k)


def client_timeout_s(parameters: dict[str, Any]) -> float | None:
    """The request's ``parameters.timeout`` in seconds: Triton's, in microseconds, what
    ``tritonclient``'s ``infer(timeout=...)`` sends; absent or 0, None (the server's own
    deadline alone). A shorter one than the server's is the request's deadline."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        shown = type(value).__name__ if not isinstance(value, int) else "a negative number"
        raise BadRequest(
            f"parameters.timeout must be a whole number of microseconds (0 for none), not {shown}"
        )
    return value / 1e6 if value else None


def no_shared_memory(parameters: dict[str, Any], what: str) -> None:
    """Triton's shared-memory extensions are not offered: a tensor placed in a region is refused
    rather than read as missing, or (an output) answered in the body instead of the region."""
    if "shared_memory_region" in parameters:
        raise BadRequest(
            f"{what} names a shared_memory_region: this server does not offer the shared-memory "
            "extensions; send the tensor in the request body and read the output from the answer"
        )


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):  # "false" is a true string: refused, not guessed
        raise BadRequest(f"{what} must be true or false")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{what}' must be an object")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{what}' must be a string")
    try:
        value.encode("utf-8")  # the answer echoes it: a lone surrogate ("\ud800") cannot be
    except UnicodeEncodeError:
        raise BadRequest(f"'{what}' is not valid Unicode text (a lone surrogate)") from None
    return value


def model_batch(
    tensor: InferInput, item_shape: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray:
    """A numeric input as the model's batch [N, *item_shape] of ``dtype``.

    A floating-point datatype is taken whose values convert to the model's dtype exactly (FP16
    always, FP64 when every value does); otherwise a 400 names the datatype to send. Integers
    and BOOL are refused, as Triton refuses a datatype the model does not declare: integers are
    most often raw 8-bit pixels, which the model would take for preprocessed values and answer
    confidently wrong.
    """
    array = tensor.array
    assert array is not None
    if array.dtype.kind in "biu" and dtype.kind == "f":
        raise BadRequest(
            f"input {tensor.name!r}: datatype is {tensor.datatype}, but the model expects "
            f"{datatype_of(dtype)} values preprocessed as its card says (GET /models/{{name}}: "
            "scale, mean, std); send those, or the encoded images as BYTES"
        )
    if len(tensor.shape) != len(item_shape) + 1 or tensor.shape[1:] != item_shape:
        raise BadRequest(
            f"input {tensor.name!r}: shape {list(tensor.shape)} does not match the model's "
            f"{[-1, *item_shape]}"
        )
    if tensor.shape[0] < 1:
        raise BadRequest(f"input {tensor.name!r}: the batch is empty")
    if array.dtype != dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(dtype)
            exact = np.array_equal(converted.astype(array.dtype), array, equal_nan=True)
        if not exact:
            raise BadRequest(
                f"input {tensor.name!r}: {tensor.datatype} values do not convert exactly to the "
                f"model's {datatype_of(dtype)}; send {datatype_of(dtype)}"
            )
        array = converted
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise BadRequest(f"input {tensor.name!r} contains NaN or infinity")
    return np.ascontiguousarray(array)


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol's name of a numpy dtype."""
    for name, candidate in NUMERIC_DATATYPES.items():
        if candidate == dtype.newbyteorder("<"):
            return name
    raise ValueError(f"no protocol datatype for {dtype}")
