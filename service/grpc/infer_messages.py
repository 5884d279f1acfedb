"""A gRPC ModelInferRequest read into the protocol's typed tensors, and the ModelInferResponse.

The same request as the REST infer's (``service.inputs.v2_request.InferRequest``), so both are
checked and batched by one code path: each input's data comes either as ``raw_input_contents``
(little-endian numbers, or BYTES elements each after a 4-byte length, as Triton's clients send
it) or in the typed ``contents`` field of its datatype. Every inconsistency is a BadRequest
that names it. Outputs go back as ``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.errors import BadRequest
from service.grpc import messages as pb
from service.http.v2_infer import top_k_strings
from service.inference.batcher import BatchResult
from service.inputs.v2_request import (
    BYTES,
    NUMERIC_DATATYPES,
    InferInput,
    InferRequest,
    RequestedOutput,
    check_count,
    check_datatype,
    check_shape,
    fill_from_bytes,
    no_shared_memory,
    pack_bytes,
)
from service.repository.registry import ServedModel

# The typed field of InferTensorContents that holds each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """An InferParameter (or ModelRepositoryParameter) as the Python value it holds."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameters_dict(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A parameters map as a dict of plain values."""
    return {key: parameter_value(value) for key, value in parameters.items()}


def read_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """The request's tensors, read and checked against the protocol (not yet the model)."""
    if not message.inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
            "give every input's data there, in the order of the inputs, or none"
        )
    request = InferRequest(
        id=message.id or None, parameters=parameters_dict(message.parameters), binary_output=True
    )
    for i, given in enumerate(message.inputs):
        request.inputs.append(_input(given, i, raw[i] if raw else None))
    if message.outputs:
        request.outputs = []
        for output in message.outputs:
            if any(o.name == output.name for o in request.outputs):
                raise BadRequest(f"output {output.name!r} is asked for more than once")
            request.outputs.append(_output(output))
    return request


def _input(given: Any, index: int, raw: bytes | None) -> InferInput:
    name = given.name
    if not name:
        raise BadRequest(f"input {index} needs a 'name'")
    datatype = check_datatype(given.datatype, name)
    tensor = InferInput(name, datatype, check_shape(list(given.shape), name))
    no_shared_memory(parameters_dict(given.parameters), f"input {name!r}")
    has_contents = given.HasField("contents") and given.contents.ByteSize() > 0
    if raw is not None:
        if has_contents:
            raise BadRequest(f"input {name!r} has both contents and raw_input_contents")
        fill_from_bytes(tensor, raw)
        return tensor
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} data can only be sent in raw_input_contents")
    values = getattr(given.contents, field)
    if datatype == BYTES:
        tensor.elements = list(values)
    else:
        dtype = NUMERIC_DATATYPES[datatype]
        if dtype.kind in "iu" and values:
            info = np.iinfo(dtype)
            if min(values) < info.min or max(values) > info.max:
                raise BadRequest(f"input {name!r}: a value is out of range for {datatype}")
        tensor.array = np.asarray(values, dtype=dtype)
        if tensor.array.size == int(np.prod(tensor.shape)):
            tensor.array = tensor.array.reshape(tensor.shape)
    check_count(tensor)
    return tensor


def _output(output: Any) -> RequestedOutput:
    parameters = parameters_dict(output.parameters)
    no_shared_memory(parameters, f"output {output.name!r}")
    k = parameters.get("classification", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise BadRequest(f"output {output.name!r}: classification must be a count")
    return RequestedOutput(output.name, True, k)


def infer_response(
    served: ServedModel,
    request: InferRequest,
    result: BatchResult,
    routing: dict[str, Any] | None = None,
) -> pb.ModelInferResponse:
    """The answer: each output asked for (every output when none is) as raw contents; the
    classification extension's top K as BYTES ``"value:index:label"``, as Triton gives them."""
    values = np.ascontiguousarray(result.outputs, dtype=np.float32)
    response = pb.ModelInferResponse(
        model_name=served.name, model_version=str(served.version), id=request.id or ""
    )
    if routing is not None:  # the routing note, as the REST answer's parameters.routing
        response.parameters["routing"].string_param = json.dumps(routing)
    for output in request.outputs or [RequestedOutput(served.card.output.name)]:
        tensor = response.outputs.add(name=output.name)
        if output.classification:
            k = min(output.classification, values.shape[1])
            strings = top_k_strings(values, served.card.labels, k)
            tensor.datatype = BYTES
            tensor.shape.extend([len(values), k])
            response.raw_output_contents.append(pack_bytes([s.encode() for s in strings]))
        else:
            tensor.datatype = "FP32"
            tensor.shape.extend(values.shape)
            response.raw_output_contents.append(values.astype("<f4", copy=False).tobytes())
    return response
