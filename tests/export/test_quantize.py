"""int8 (static QDQ, calibrated on training images) and fp16 variants of a trained digits model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from export.complexity import count_complexity
from export.evaluate import logits_of, make_session
from export.quantize import QuantizationError, calibration_sample, make_variant, quantize_int8
from service.contract.preprocess import normalize_uint8
from tests.support.trained_digits import accuracy, trained_digits


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = trained_digits()
    out = tmp_path_factory.mktemp("variants")
    spec = d.splits.input_spec
    return {
        "fp32": d.onnx_path,
        "int8": make_variant("int8", d.onnx_path, out / "int8.onnx", d.splits.train_images, spec),
        "fp16": make_variant("fp16", d.onnx_path, out / "fp16.onnx", d.splits.train_images, spec),
    }


def _test_logits(path: Path) -> np.ndarray:
    return logits_of(make_session(path, "CPUExecutionProvider", 1), _test_x())


def _test_x() -> np.ndarray:
    d = trained_digits()
    return normalize_uint8(d.splits.test_images, d.splits.input_spec)


def test_int8_is_qdq_with_float_io_and_within_one_point_of_fp32(variants: dict[str, Path]) -> None:
    d = trained_digits()
    model = onnx.load(str(variants["int8"]))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8]
    assert len(int8_weights) >= 5, "conv weights should be stored as int8"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    fp32 = accuracy(_test_logits(variants["fp32"]), d.splits.test_labels)
    int8 = accuracy(_test_logits(variants["int8"]), d.splits.test_labels)
    # Measured on the full 360-image test split: the gap is at most 1 point (3.6 images).
    assert fp32 - int8 <= 0.01, f"int8 {int8:.4f} vs fp32 {fp32:.4f}"
    assert variants["int8"].stat().st_size < variants["fp32"].stat().st_size


def test_int8_weights_use_seven_bits_so_no_cpu_saturates_them(variants: dict[str, Path]) -> None:
    """Every int8 weight lies in [-64, 63]: a u8 x s8 pair sum then fits int16 on CPUs without
    VNNI, so the int8 model answers the same on an AVX2-only CPU as on a VNNI one."""
    from onnx import numpy_helper

    model = onnx.load(str(variants["int8"]))
    weights = [
        numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
    ]
    assert weights, "the QDQ model stores its weights as int8"
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


def test_fp16_stores_half_weights_keeps_float_io_and_matches_fp32(
    variants: dict[str, Path],
) -> None:
    d = trained_digits()
    model = onnx.load(str(variants["fp16"]))
    onnx.checker.check_model(model)
    types = {i.data_type for i in model.graph.initializer if len(i.dims) > 1}
    assert types == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    fp32, fp16 = _test_logits(variants["fp32"]), _test_logits(variants["fp16"])
    assert np.max(np.abs(fp32 - fp16)) < 0.05 * max(1.0, float(np.max(np.abs(fp32))))
    assert abs(accuracy(fp16, d.splits.test_labels) - accuracy(fp32, d.splits.test_labels)) <= 0.005
    assert variants["fp16"].stat().st_size < 0.6 * variants["fp32"].stat().st_size


def test_variants_keep_params_and_macs(variants: dict[str, Path]) -> None:
    base = count_complexity(variants["fp32"])
    assert base.params > 0 and base.macs > 0
    assert count_complexity(variants["int8"]) == base
    assert count_complexity(variants["fp16"]) == base


def test_calibration_sample_is_reproducible_and_bounded() -> None:
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1)
    a, b = calibration_sample(images, 100, seed=3), calibration_sample(images, 100, seed=3)
    assert len(a) == 100 and np.array_equal(a, b)
    assert len(calibration_sample(images[:10], 100)) == 10


def test_unknown_precision_and_empty_calibration_are_errors(tmp_path: Path) -> None:
    d = trained_digits()
    spec = d.splits.input_spec
    with pytest.raises(QuantizationError, match="unknown variant precision 'int4'"):
        make_variant("int4", d.onnx_path, tmp_path / "x.onnx", d.splits.train_images, spec)
    empty = d.splits.train_images[:0]
    with pytest.raises(QuantizationError, match="at least one training image"):
        quantize_int8(d.onnx_path, tmp_path / "x.onnx", empty, spec)


def test_per_tensor_fallbacks_do_not_flood_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime warns once per rank-1 (BatchNormalization) weight that per-channel
    quantization falls back to per tensor; quantize_int8 drops those warnings, and only those."""
    import contextlib
    import logging

    import export.quantize as quantize

    d = trained_digits()
    spec, images = d.splits.input_spec, d.splits.train_images

    def fallbacks() -> list[str]:
        return [r.getMessage() for r in caplog.records if "out-of-range" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        quantize_int8(d.onnx_path, tmp_path / "quiet.onnx", images, spec, n_calibration=64)
        logging.warning("other warnings still pass")
    assert fallbacks() == []
    assert "other warnings still pass" in caplog.text
    caplog.clear()
    monkeypatch.setattr(quantize, "_quiet_per_tensor_fallbacks", contextlib.nullcontext)
    with caplog.at_level(logging.WARNING):
        quantize_int8(d.onnx_path, tmp_path / "loud.onnx", images, spec, n_calibration=64)
    assert fallbacks() and all("bn" in m for m in fallbacks())  # the warnings it drops exist
