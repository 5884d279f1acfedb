"""ONNX Runtime sessions: provider choice (CUDA with IO binding, else CPU), threads, warm-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract.model_card import ModelCard, ModelRepositoryError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_provider(requested: str) -> str:
    """The execution provider for ``requested`` ('auto', 'cpu' or 'cuda') on this machine."""
    available = ort.get_available_providers()
    if requested == "cpu":
        return CPU
    if CUDA in available:
        return CUDA
    if requested == "cuda":
        raise ModelRepositoryError(
            "provider 'cuda' requested but ONNX Runtime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu on a GPU machine"
        )
    return CPU


class OnnxModel:
    """One ONNX Runtime session of one model version; ``__call__`` runs a batch (thread-safe)."""

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        provider: str,
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
        spinning: bool = False,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        # ORT's pool threads spin after each run by default; with a session per model version
        # the idle spinners take the cores from the event loop and from the other models.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        # Batches already run in their own executor threads; ORT's inter-op pool adds nothing.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            # CPU stays listed after CUDA so that operators CUDA lacks still run.
            providers = [provider, CPU] if provider == CUDA else [provider]
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # ORT raises several private exception types
            raise ModelRepositoryError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        self.path = path
        self.provider = self.session.get_providers()[0]
        if provider == CUDA and self.provider != CUDA:
            raise ModelRepositoryError(
                f"{path}: provider 'cuda' requested but ONNX Runtime fell back to "
                f"{self.provider} (are the CUDA and cuDNN libraries installed?)"
            )
        self.dtype = np.dtype(card.input.dtype)
        self.input_name = card.input.name
        self.output_name = card.output.name
        self.item_shape = tuple(card.input.shape)
        self._check_signature(card)
        # IO binding by default on CUDA only; it is device-generic, so tests exercise it on CPU.
        self._use_io_binding = self.provider == CUDA if io_binding is None else io_binding
        self._device = "cuda" if self.provider == CUDA else "cpu"

    def _check_signature(self, card: ModelCard) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.input_name not in inputs:
            raise ModelRepositoryError(
                f"{self.path}: manifest input {self.input_name!r} is not a graph input "
                f"({', '.join(inputs)})"
            )
        if self.output_name not in outputs:
            raise ModelRepositoryError(
                f"{self.path}: manifest output {self.output_name!r} is not a graph output "
                f"({', '.join(sorted(outputs))})"
            )
        width = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        if len(width) != 2 or (isinstance(width[1], int) and width[1] != len(card.labels)):
            raise ModelRepositoryError(
                f"{self.path}: graph output {self.output_name!r} has shape {width}, but the card "
                f"has {len(card.labels)} labels (expected [N, {len(card.labels)}])"
            )
        dims = inputs[self.input_name].shape
        if len(dims) != 4 or any(
            isinstance(d, int) and d != want
            for d, want in zip(dims[1:], self.item_shape, strict=False)
        ):
            raise ModelRepositoryError(
                f"{self.path}: graph input shape {dims} does not match manifest [N, "
                f"{', '.join(map(str, self.item_shape))}]"
            )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits [N, classes] for a batch [N, C, H, W]."""
        if self._use_io_binding:
            # Inputs go to the device once, outputs come back once: no extra staging copies.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, self._device)
            self.session.run_with_iobinding(binding)
            out: np.ndarray = binding.copy_outputs_to_cpu()[0]
            return out
        result: np.ndarray = self.session.run([self.output_name], {self.input_name: batch})[0]
        return result

    def batch1_seconds(self, runs: int = 10, pause_s: float = 0.0) -> float:
        """Median wall time of a batch-1 call, measured here (decides inline inference and the
        thread layout); with ``pause_s``, each call follows that long idle, as a lone request."""
        return self.batch_seconds(1, runs, pause_s)

    def batch_seconds(self, batch_size: int, runs: int = 10, pause_s: float = 0.0) -> float:
        """Median wall time of a call on ``batch_size`` inputs, measured here; with ``pause_s``,
        each call follows that long idle."""
        x = np.zeros((batch_size, *self.item_shape), dtype=self.dtype)
        times = []
        for _ in range(runs):
            if pause_s:
                time.sleep(pause_s)
            t0 = time.perf_counter()
            self(x)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def warm_up(self, runs: int, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Run a few batches so that the first real request pays no allocation or tuning cost."""
        for bs in batch_sizes:
            x = np.zeros((bs, *self.item_shape), dtype=self.dtype)
            for _ in range(runs):
                self(x)
