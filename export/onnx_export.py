"""Export a trained PyTorch network to ONNX, check the graph and prove parity on real images."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from export.evaluate import logits_of, make_session
from service.contract.model_card import InputSpec
from service.contract.preprocess import normalize_uint8

DEFAULT_OPSET = 17
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """The network could not be exported, or the exported graph does not match it."""


@dataclass(frozen=True)
class ParityReport:
    """How closely the ONNX graph in ONNX Runtime reproduces the PyTorch network."""

    n: int
    max_abs_diff: float
    top1_agreement: float
    atol: float
    min_agreement: float

    @property
    def ok(self) -> bool:
        """True when both the logit tolerance and the top-1 agreement hold."""
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.min_agreement

    def summary(self) -> str:
        """One line with the figures and the thresholds they are held to."""
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"parity {verdict}: max |logit diff| {self.max_abs_diff:.3g} (limit {self.atol:g}), "
            f"same top-1 on {self.top1_agreement:.4%} of {self.n} images "
            f"(limit {self.min_agreement:.1%})"
        )


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    spec: InputSpec,
    *,
    opset: int = DEFAULT_OPSET,
    output_name: str = OUTPUT_NAME,
) -> Path:
    """Export ``model`` (eval mode, fp32) with a dynamic batch axis; runs the ONNX checker."""
    if opset < DEFAULT_OPSET:
        raise ExportError(f"opset {opset} is too old: use {DEFAULT_OPSET} or newer")
    model = model.eval().float()
    dummy = torch.zeros((2, *spec.shape), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is the contract (export/models is written for it).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,
            input_names=[spec.name],
            output_names=[output_name],
            dynamic_axes={spec.name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX checker rejected the exported graph: {exc}") from None
    tmp.replace(path)
    return path


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on a float numpy tensor, in eval mode without gradients."""
    model = model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(x[i : i + batch_size])).float().numpy())
    return np.concatenate(outs, axis=0)


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    images: np.ndarray,
    spec: InputSpec,
    *,
    atol: float = 1e-4,
    min_agreement: float = 0.999,
) -> ParityReport:
    """Compare PyTorch and ONNX Runtime logits on uint8 images [N,H,W,C] preprocessed per spec."""
    if len(images) == 0:
        raise ExportError("parity needs at least one test image")
    x = normalize_uint8(images, spec).astype(np.float32)
    expected = torch_logits(model, x)
    got = logits_of(make_session(onnx_path, "CPUExecutionProvider"), x)
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch output shape {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    agree = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    return ParityReport(
        n=len(x), max_abs_diff=diff, top1_agreement=agree, atol=atol, min_agreement=min_agreement
    )


def export_with_parity(
    model: torch.nn.Module,
    path: Path,
    spec: InputSpec,
    test_images: np.ndarray,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = 1e-4,
    min_agreement: float = 0.999,
) -> ParityReport:
    """Export, check and prove parity; on failure removes the file and raises with the figures."""
    export_onnx(model, path, spec, opset=opset)
    report = check_parity(model, path, test_images, spec, atol=atol, min_agreement=min_agreement)
    if not report.ok:
        path.unlink()  # a graph that fails parity must not be picked up by mistake
        raise ExportError(f"{path}: {report.summary()}")
    return report
