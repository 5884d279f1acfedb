"""ONNX export: graph contract, checker, and parity with PyTorch on a really trained network."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.evaluate import logits_of, make_session
from export.onnx_export import ExportError, check_parity, export_onnx, export_with_parity
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
