"""ONNX export: graph contract, checker, and parity with PyTorch on a really trained network."""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.complexity import count_complexity
from export.evaluate import logits_of, make_session
from export.models import build_model
from export.onnx_export import (
    ExportError,
    check_parity,
    export_onnx,
    export_with_parity,
    load_onnx_weights,
)
from service.contract.preprocess import normalize_uint8
from tests.support.trained_digits import accuracy, trained_digits


def test_exported_graph_has_named_io_dynamic_batch_and_passes_the_checker() -> None:
    d = trained_digits()
    model = onnx.load(str(d.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "input" and out.name == "logits"
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")
    assert [d.dim_value for d in in_dims[1:]] == [1, 8, 8]
    session = make_session(d.onnx_path, "CPUExecutionProvider", 1)
    x = normalize_uint8(d.splits.test_images[:37], d.splits.input_spec)
    assert session.run(None, {"input": x})[0].shape == (37, 10)
    assert session.run(None, {"input": x[:1]})[0].shape == (1, 10)


def test_parity_on_the_full_test_split_of_a_trained_model() -> None:
    d = trained_digits()
    assert d.torch_top1 > 0.9, "the fixture network did not learn digits"
    report = check_parity(d.model, d.onnx_path, d.splits.test_images, d.splits.input_spec)
    assert report.n == len(d.splits.test_labels) == 360
    assert report.max_abs_diff <= 1e-4
    assert report.top1_agreement >= 0.999
    assert report.ok and "parity ok" in report.summary()
    # The exported model is as accurate in ONNX Runtime as the network was in PyTorch.
    x = normalize_uint8(d.splits.test_images, d.splits.input_spec)
    onnx_top1 = accuracy(logits_of(make_session(d.onnx_path), x), d.splits.test_labels)
    assert abs(onnx_top1 - d.torch_top1) <= 1 / 360


def test_parity_failure_raises_with_the_figures(tmp_path: Path) -> None:
    d = trained_digits()
    other = copy.deepcopy(d.model)
    with torch.no_grad():
        last = [p for p in other.parameters() if p.ndim == 1][-1]
        last.add_(torch.linspace(-3.0, 3.0, last.numel()))  # shifts each class logit differently
    report = check_parity(other, d.onnx_path, d.splits.test_images, d.splits.input_spec)
    assert not report.ok
    assert report.max_abs_diff > 1.0
    assert "FAILED" in report.summary() and f"{report.max_abs_diff:.3g}" in report.summary()

    with pytest.raises(ExportError, match=r"parity FAILED: max \|logit diff\|"):
        export_with_parity(
            d.model, tmp_path / "m.onnx", d.splits.input_spec, d.splits.test_images, atol=-1.0
        )
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_an_old_opset(tmp_path: Path) -> None:
    d = trained_digits()
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(d.model, tmp_path / "m.onnx", d.splits.input_spec, opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_parity_needs_images() -> None:
    d = trained_digits()
    empty = np.zeros((0, 8, 8, 1), dtype=np.uint8)
    with pytest.raises(ExportError, match="at least one test image"):
        check_parity(d.model, d.onnx_path, empty, d.splits.input_spec)


def _optimized_ops(path: Path, out: Path) -> Counter[str]:
    """The operators of the graph ONNX Runtime runs for ``path`` (the service's optimization
    level), as it writes the optimized graph out."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(out)).graph.node)


def _export_folded(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    """The exporter's plain eval mode, Conv+BatchNorm folded, as files were written before the
    weights' names were kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(),
            (torch.zeros((1, *shape)),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
        )
    return path


def test_the_file_rebuilds_the_trained_network_bit_for_bit() -> None:
    d = trained_digits()
    rebuilt = load_onnx_weights(build_model(d.meta.arch, **d.meta.model_kwargs), d.onnx_path)
    trained = d.model.state_dict()
    for key, value in rebuilt.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, trained[key]), key
    report = check_parity(rebuilt, d.onnx_path, d.splits.test_images, d.splits.input_spec)
    assert report.max_abs_diff <= 1e-5 and report.top1_agreement == 1.0


def test_a_file_that_cannot_rebuild_the_network_is_refused_by_name(tmp_path: Path) -> None:
    d = trained_digits()
    folded = _export_folded(d.model, d.splits.input_spec.shape, tmp_path / "folded.onnx")
    arch, kwargs = d.meta.arch, d.meta.model_kwargs
    with pytest.raises(ExportError, match="cannot rebuild the network") as err:
        load_onnx_weights(build_model(arch, **kwargs), folded)
    assert ".bn2.weight" in str(err.value)  # names a BatchNorm weight folded into its Conv
    with pytest.raises(ExportError, match=r"shortcut\.weight"):
        load_onnx_weights(build_model("wrn-10-2", **kwargs), d.onnx_path)
    with pytest.raises(ExportError, match=r"head\.fc\.weight has shape \(10, 64\)"):
        load_onnx_weights(build_model(arch, **{**kwargs, "num_classes": 5}), d.onnx_path)


def test_onnx_runtime_runs_the_unfolded_file_as_the_folded_graph(tmp_path: Path) -> None:
    """The file keeps BatchNorm apart from the convolutions for the names' sake; ONNX Runtime
    folds it when it loads the graph, so the service runs the same operators as before."""
    d = trained_digits()
    folded = _export_folded(d.model, d.splits.input_spec.shape, tmp_path / "folded.onnx")
    in_file = Counter(n.op_type for n in onnx.load(str(d.onnx_path)).graph.node)
    folded_in_file = Counter(n.op_type for n in onnx.load(str(folded)).graph.node)
    assert in_file["BatchNormalization"] > folded_in_file["BatchNormalization"]
    ours = _optimized_ops(d.onnx_path, tmp_path / "ours.opt.onnx")
    theirs = _optimized_ops(folded, tmp_path / "folded.opt.onnx")
    assert ours == theirs
    # and the card counts the parameters the folded graph has
    assert count_complexity(d.onnx_path) == count_complexity(folded)
