"""Build a small but real model repository without torch: logistic regression on sklearn digits.

The weights are fitted with scikit-learn, the graph is written with onnx.helper, and every figure
in the manifest is measured with ONNX Runtime on the digits test split, so service and deploy tests
run against real ONNX Runtime sessions and real images.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from export.evaluate import calibration
from service.contract.model_card import (
    MANIFEST_FILENAME,
    EvalMetrics,
    InputSpec,
    LatencyProfile,
    ModelCard,
    OutputSpec,
    ProfileRow,
    ResizeSpec,
    TrainingInfo,
    VersionRecord,
    model_file,
    read_manifest,
    sha256_file,
    utc_now,
    write_manifest,
)
from service.contract.preprocess import normalize_uint8

DIGIT_LABELS = tuple(str(i) for i in range(10))


def digits_uint8_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The project's digits split as uint8 [N, 8, 8, 1] images (0..16 mapped to 0..255)."""
    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_tr, x_te, y_tr.astype(np.int64), y_te.astype(np.int64)


def digits_input_spec() -> InputSpec:
    """Preprocessing of the test models: grey 8x8, scaled to 0..1, mean 0.5, std 0.25."""
    return InputSpec(
        name="input",
        shape=(1, 8, 8),
        color="gray",
        resize=ResizeSpec(height=8, width=8, resample="bilinear"),
        mean=(0.5,),
        std=(0.25,),
    )


def _logreg_onnx(weights: np.ndarray, bias: np.ndarray, hidden: int) -> onnx.ModelProto:
    """Flatten -> Gemm graph; ``hidden`` > 0 inserts extra identity-like work for a slower model."""
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1)]
    inits = [
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "B"),
    ]
    feat = "flat"
    if hidden:
        # A wide square matrix applied and undone keeps predictions but costs real compute.
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
        for i in range(hidden):
            inits.append(numpy_helper.from_array(q.astype(np.float32), f"Q{i}"))
            inits.append(numpy_helper.from_array(q.T.astype(np.float32), f"QT{i}"))
            nodes.append(helper.make_node("MatMul", [feat, f"Q{i}"], [f"h{i}"]))
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"QT{i}"], [f"r{i}"]))
            feat = f"r{i}"
    nodes.append(helper.make_node("Gemm", [feat, "W", "B"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "digits_logreg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _profile(session: ort.InferenceSession, sample: np.ndarray) -> LatencyProfile:
    rows = []
    for bs in (1, 8, 32):
        batch = np.repeat(sample[:1], bs, axis=0)
        for _ in range(5):  # warm-up: a session's first runs allocate its buffers
            session.run(None, {"input": batch})
        times = []
        for _ in range(100):  # p99 of 100: one scheduler stall does not make the figure
            t0 = time.perf_counter()
            session.run(None, {"input": batch})
            times.append(time.perf_counter() - t0)
        p50, p99 = np.percentile(times, [50, 99]) * 1000.0
        rows.append(
            ProfileRow(batch_size=bs, p50_ms=p50, p99_ms=p99, images_per_s=bs / (p50 / 1000.0))
        )
    return LatencyProfile(
        provider="CPUExecutionProvider",
        threads=1,
        machine=f"{platform.machine()} {platform.processor() or 'cpu'}",
        rows=tuple(rows),
    )


def build_digits_model(repo: Path, name: str, version: int = 1, hidden: int = 0) -> ModelCard:
    """Fit, export, measure and write one model version into ``repo``; returns its card."""
    x_tr, x_te, y_tr, y_te = digits_uint8_split()
    spec = digits_input_spec()
    previous: tuple[VersionRecord, ...] = ()
    if (repo / name / MANIFEST_FILENAME).exists():
        previous = read_manifest(repo / name).version_records()
    f_tr = normalize_uint8(x_tr, spec).reshape(len(x_tr), -1)
    f_te = normalize_uint8(x_te, spec)
    clf = LogisticRegression(max_iter=2000, C=0.5, random_state=0).fit(f_tr, y_tr)
    path = model_file(repo / name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(_logreg_onnx(clf.coef_, clf.intercept_, hidden), str(path))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": f_te})[0]
    order = np.argsort(-logits, axis=1)
    top1 = float(np.mean(order[:, 0] == y_te))
    top5 = float(np.mean((order[:, :5] == y_te[:, None]).any(axis=1)))
    ece, nll = calibration(logits, y_te)
    card = ModelCard(
        name=name,
        version=version,
        labels=DIGIT_LABELS,
        input=spec,
        output=OutputSpec(name="logits"),
        training=TrainingInfo(
            method="baseline",
            architecture="logreg" if not hidden else f"logreg-h{hidden}",
            dataset="digits",
            epochs=0,
            seed=0,
            wall_time_s=0.0,
            recipe="scikit-learn LogisticRegression (test fixture)",
        ),
        metrics=EvalMetrics(
            dataset="digits",
            split="test",
            n=len(y_te),
            top1=top1,
            top5=top5,
            measured_with=f"onnxruntime {ort.__version__}",
            ece=ece,
            nll=nll,
        ),
        profile=_profile(session, f_te),
        params=int(clf.coef_.size + clf.intercept_.size + hidden * 2 * 64 * 64),
        macs=int(clf.coef_.size + hidden * 2 * 64 * 64),
        size_bytes=path.stat().st_size,
        sha256=sha256_file(path),
        other_versions=previous,
        created_at=utc_now(),
    )
    write_manifest(repo / name, card)
    return card
