"""ONNX Runtime sessions: provider choice (CUDA with IO binding, else CPU), threads, warm-up."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.contract.model_card import ModelCard, ModelRepositoryError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# ORT's default cuDNN search ("EXHAUSTIVE") times every convolution algorithm again whenever a
# session's input shape changes; the heuristic choice is cheap (both measured just below).
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
# On CUDA, ONNX Runtime (onnxruntime-gpu 1.31, cuDNN 9) sets each convolution up again whenever
# the input shape differs from the session's previous call: on an H200 the WRN-40-2 teacher took
# 1.8 ms a call at a constant batch of 6 (2.2 ms at 32) and 120 ms a call with batches of 5 and 6
# in turn (240-580 ms with the exhaustive search). A dynamic batcher changes the shape at nearly
# every call, so on CUDA a batch is padded to a size bucket and each bucket has a session of its
# own, which then always sees one shape. Buckets are powers of BUCKET_GROWTH: at most that many
# times the rows computed, which a GPU runs in about the time of the real rows at these sizes.
BUCKET_GROWTH = 4


def shape_bucket(rows: int) -> int:
    """The padded batch size for ``rows`` inputs: the smallest power of BUCKET_GROWTH at least
    that large (1, 4, 16, 64, ...)."""
    bucket = 1
    while bucket < rows:
        bucket *= BUCKET_GROWTH
    return bucket


def warm_up_batch_sizes(provider: str, largest: int) -> tuple[int, ...]:
    """The batch sizes a new model version runs before it is ready: on CUDA one of each shape
    bucket up to ``largest`` rows (each bucket's session is opened and set up for its shape), on
    CPU 1 and 8."""
    if provider != CUDA:
        return (1, 8)
    sizes, top = [1], shape_bucket(largest)
    while sizes[-1] < top:
        sizes.append(sizes[-1] * BUCKET_GROWTH)
    return tuple(sizes)


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
    """One model version in ONNX Runtime; ``__call__`` runs a batch (thread-safe).

    On CPU one session takes every batch size. With ``bucketed`` (the default on CUDA) a batch is
    padded to its shape bucket and run on that bucket's own session, opened at its first call
    (``warm_up`` opens them before the version is ready); ``session`` is the batch-1 one.
    """

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        provider: str,
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
        spinning: bool = False,
        bucketed: bool | None = None,
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
            providers: list[str | tuple[str, dict[str, str]]] = (
                [(CUDA, CUDA_OPTIONS), CPU] if provider == CUDA else [provider]
            )
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # ORT raises several private exception types
            raise ModelRepositoryError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
        self._opts, self._providers = opts, providers
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
        self.bucketed = self.provider == CUDA if bucketed is None else bucketed
        self._buckets: dict[int, ort.InferenceSession] = {1: self.session}
        self._opening = threading.Lock()

    def _bucket_session(self, bucket: int) -> ort.InferenceSession:
        """The session of one shape bucket, opened on its first call (two callers: one open)."""
        found = self._buckets.get(bucket)
        if found is not None:
            return found
        with self._opening:
            if bucket not in self._buckets:
                self._buckets[bucket] = ort.InferenceSession(
                    str(self.path), self._opts, providers=self._providers
                )
            return self._buckets[bucket]

    @property
    def buckets(self) -> tuple[int, ...]:
        """The shape buckets that have a session now (bucketed; else just 1)."""
        return tuple(sorted(self._buckets))

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
        if not self.bucketed:
            return self._run(self.session, batch)
        rows = len(batch)
        bucket = shape_bucket(rows)
        if bucket > rows:  # zero rows up to the bucket: one shape per session
            padded = np.zeros((bucket, *batch.shape[1:]), dtype=batch.dtype)
            padded[:rows] = batch
            batch = padded
        return self._run(self._bucket_session(bucket), batch)[:rows]

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        if self._use_io_binding:
            # Inputs go to the device once, outputs come back once: no extra staging copies.
            binding = session.io_binding()
            binding.bind_cpu_input(self.input_name, batch)
            binding.bind_output(self.output_name, self._device)
            session.run_with_iobinding(binding)
            out: np.ndarray = binding.copy_outputs_to_cpu()[0]
            return out
        result: np.ndarray = session.run([self.output_name], {self.input_name: batch})[0]
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
