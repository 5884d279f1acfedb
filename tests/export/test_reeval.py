"""Independent re-evaluation: PNG files, Pillow, numpy, onnxruntime and the manifest, nothing else.

Neither ``service.contract.preprocess`` nor ``export.evaluate`` is used here: the manifest's
preprocessing fields alone must reproduce the recorded top-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from export.quantize import quantize_int8
from export.repository import ArtifactInfo, EvalData, ProfileSettings, publish, training_info
from service.contract.model_card import model_dirs, model_file, read_manifest
from tests.support.onnx_repo import digits_uint8_split
from tests.support.reeval import tensor_by_hand
from tests.support.trained_digits import trained_digits


@pytest.fixture(scope="module")
def png_test_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    """The digits test split written as 8-bit greyscale PNG files."""
    _, x_te, _, y_te = digits_uint8_split()
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(x_te):
        path = folder / f"{i:04d}.png"
        Image.fromarray(image[:, :, 0], mode="L").save(path)
        paths.append(path)
    return paths, y_te


@pytest.fixture(scope="module")
def generated_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository written by export.repository: a trained network and its int8 variant."""
    d = trained_digits()
    repo = tmp_path_factory.mktemp("generated")
    data = EvalData("digits", d.splits.test_images, d.splits.test_labels)
    settings = ProfileSettings(threads=1, machine="test", min_runs=3, min_seconds=0.0)
    info = ArtifactInfo("digits-baseline-wrn-10-1", d.splits.labels, d.splits.input_spec,
                        training_info(d.meta))  # fmt: skip
    publish(repo, info, d.onnx_path, data, settings)
    spec = d.splits.input_spec
    int8 = quantize_int8(d.onnx_path, repo / "int8.onnx", d.splits.train_images, spec)
    int8_info = ArtifactInfo(info.name + "-int8", info.labels, info.input, info.training,
                             precision="int8", derived_from=info.name)  # fmt: skip
    publish(repo, int8_info, int8, data, settings)
    int8.unlink()
    return repo


def _reevaluate(model_dir: Path, paths: list[Path], labels: np.ndarray) -> tuple[float, float]:
    card = read_manifest(model_dir)
    session = ort.InferenceSession(
        str(model_file(model_dir, card.version)), providers=["CPUExecutionProvider"]
    )
    x = np.stack([tensor_by_hand(p, card) for p in paths])
    logits = session.run([card.output.name], {card.input.name: x})[0]
    assert logits.shape == (len(paths), len(card.labels))
    return float(np.mean(logits.argmax(axis=1) == labels)), card.metrics.top1


def test_generated_repository_reproduces_recorded_top1(
    generated_repo: Path, png_test_set: tuple[list[Path], np.ndarray]
) -> None:
    paths, labels = png_test_set
    dirs = model_dirs(generated_repo)
    assert [d.name for d in dirs] == ["digits-baseline-wrn-10-1", "digits-baseline-wrn-10-1-int8"]
    for model_dir in dirs:
        measured, recorded = _reevaluate(model_dir, paths, labels)
        assert recorded > 0.9
        assert abs(measured - recorded) <= 0.002, f"{model_dir.name}: {measured} vs {recorded}"


def test_fixture_repository_reproduces_recorded_top1(
    digits_repo: Path, png_test_set: tuple[list[Path], np.ndarray]
) -> None:
    paths, labels = png_test_set
    measured, recorded = _reevaluate(digits_repo / "digits-logreg", paths, labels)
    assert abs(measured - recorded) <= 0.002
