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
# The newest opset the TorchScript exporter supports (newer ones it warns about or dumps its IR on).
MAX_OPSET: int = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
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
    """Export ``model`` (eval mode, fp32) with a dynamic batch axis; runs the ONNX checker.

    The graph keeps every BatchNormalization and names each weight and buffer as the PyTorch
    state dict does (no Conv+BatchNorm folding in the file: ONNX Runtime folds them when it loads
    the graph, so the served graph is the same), which makes the file enough to rebuild the trained
    network (:func:`load_onnx_weights`)."""
    if opset < DEFAULT_OPSET:
        raise ExportError(f"opset {opset} is too old: use {DEFAULT_OPSET} or newer")
    if opset > MAX_OPSET:
        raise ExportError(
            f"opset {opset} is too new for torch's exporter: use {MAX_OPSET} or older"
        )
    model = model.eval().float()
    dummy = torch.zeros((2, *spec.shape), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is the contract (export/models is written for it).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Its worry (folding that mutates parameters being trained) does not apply to an
        # eval-mode network; the parity check below proves the graph either way.
        warnings.filterwarnings("ignore", "It is recommended that constant folding be turned off")
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
            # PRESERVE on an eval-mode network: exported as in eval mode, minus the exporter's
            # Conv+BatchNorm folding, which renames the folded weights beyond recovery.
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX checker rejected the exported graph: {exc}") from None
    tmp.replace(path)
    return path


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """The named weights of an ONNX file: its initializers, and the names that Identity nodes
    give them (the exporter stores equal tensors once, and names the other copies that way)."""
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            weights.setdefault(node.output[0], weights[node.input[0]])
    return weights


def load_onnx_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load the weights of ``path`` (exported by :func:`export_onnx`) into ``model``, a fresh
    network of the same architecture; raises ExportError naming what the file lacks."""
    weights = onnx_weights(path)
    state = model.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise ExportError(
            f"{path}: {len(missing)} of the network's {len(state)} weights are not in the file "
            f"(e.g. {', '.join(missing[:3])}): it holds another architecture, or its "
            "Conv+BatchNorm pairs were folded (files exported before rocketserve kept the weights' "
            "names), and cannot rebuild the network"
        )
    loaded = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            loaded[key] = value
            continue
        array = weights[key]
        if tuple(array.shape) != tuple(value.shape):
            raise ExportError(
                f"{path}: {key} has shape {tuple(array.shape)}, the network wants "
                f"{tuple(value.shape)}"
            )
        loaded[key] = torch.from_numpy(array.copy()).to(value.dtype)
    model.load_state_dict(loaded, strict=True)
    return model.eval()


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
