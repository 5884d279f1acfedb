"""Parameter count and multiply-accumulates of one image, counted from the ONNX graph itself."""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, shape_inference

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class ComplexityError(RuntimeError):
    """A shape needed to count MACs is unknown."""


@dataclass(frozen=True)
class Complexity:
    """Learned parameters and MACs for a single image (batch 1)."""

    params: int
    macs: int


def _with_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of the model with every graph input's first axis fixed to 1, shapes inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    init_names = {init.name for init in fixed.graph.initializer}
    for inp in fixed.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
    return shape_inference.infer_shapes(fixed, strict_mode=False)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Known static shapes of every tensor in the graph."""
    shapes: dict[str, list[int]] = {}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if all(d >= 0 for d in dims):
            shapes.setdefault(info.name, dims)
    return shapes


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the learned tensors: float weights and quantized (DequantizeLinear) weights.

    Quantization scales and zero points, and scalar constants, are not parameters.
    """
    uses: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for node in model.graph.node:
        for idx, name in enumerate(node.input):
            uses[name].append((node.op_type, idx))
    total = 0
    for init in model.graph.initializer:
        if len(init.dims) == 0:
            continue
        use = uses.get(init.name, [])
        if any(op in _QDQ_OPS and idx > 0 for op, idx in use):
            continue
        dequantized = any(op == "DequantizeLinear" and idx == 0 for op, idx in use)
        if init.data_type in _FLOAT_TYPES or dequantized:
            total += math.prod(init.dims)
    return total


def _need(shapes: dict[str, list[int]], name: str, node: onnx.NodeProto) -> list[int]:
    if name not in shapes:
        raise ComplexityError(f"shape of {name!r} (input/output of {node.op_type}) is unknown")
    return shapes[name]


def count_macs(model: onnx.ModelProto) -> int:
    """MACs of one image over Conv (grouped and depthwise included), Gemm and MatMul nodes."""
    inferred = _with_batch_one(model)
    shapes = _shapes(inferred)
    total = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            out = _need(shapes, node.output[0], node)
            weight = _need(shapes, node.input[1], node)
            # Each output element sums over (C_in / group) x kernel window.
            total += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            a = _need(shapes, node.input[0], node)
            out = _need(shapes, node.output[0], node)
            trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
            total += math.prod(out) * k
        elif node.op_type == "MatMul":
            a = _need(shapes, node.input[0], node)
            out = _need(shapes, node.output[0], node)
            total += math.prod(out) * a[-1]
    return total


def _folds_batchnorm(model: onnx.ModelProto) -> bool:
    """Whether a BatchNormalization follows a Conv whose output nothing else reads: a pair that
    ONNX Runtime folds into one Conv when it loads the graph."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    readers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            readers[name] += 1
    return any(
        node.op_type == "BatchNormalization"
        and producers.get(node.input[0]) == "Conv"
        and readers[node.input[0]] == 1
        for node in model.graph.node
    )


def _as_run(path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for ``path`` after its basic, provider-independent rewrites
    (constants folded, BatchNorm folded into the Conv before it)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "basic.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def count_complexity(path: Path) -> Complexity:
    """Params and MACs (batch 1) of the ONNX file at ``path``. Parameters are counted as the
    graph runs: a BatchNormalization kept apart from its Conv in the file (so that the file names
    every trained weight, export/onnx_export.py) counts as the bias it becomes once folded, as
    it does in the int8 variant and in files exported folded."""
    model = onnx.load(str(path))
    params = count_params(_as_run(path) if _folds_batchnorm(model) else model)
    return Complexity(params=params, macs=count_macs(model))
