"""A teacher's answers on a split: computed once, shared through a folder, keyed by inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.evaluate import evaluate_accuracy, logits_of, make_session
from export.teacher_answers import TeacherAnswers, answers_key
from service.contract.preprocess import normalize_uint8
from tests.support.trained_digits import trained_digits


def _direct(path: Path, images: np.ndarray) -> np.ndarray:
    spec = trained_digits().splits.input_spec
    return logits_of(
        make_session(path, "CPUExecutionProvider", 1), normalize_uint8(images, spec)
    ).argmax(axis=1)


def _flipped(src: Path, dst: Path) -> Path:
    """The network with every weight negated: other answers from the same graph."""
    graph = onnx.load(str(src))
    for init in graph.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(graph, str(dst))
    return dst


def test_answers_are_the_teachers_top1_and_computed_once_in_memory() -> None:
    d = trained_digits()
    images, spec = d.splits.test_images, d.splits.input_spec
    answers = TeacherAnswers()
    first = answers.top1(d.onnx_path, spec, images)
    assert first.dtype == np.int64 and first.shape == (len(images),)
    np.testing.assert_array_equal(first, _direct(d.onnx_path, images))
    again = answers.top1(d.onnx_path, spec, images)
    assert answers.computed == 1
    np.testing.assert_array_equal(again, first)


def test_a_folder_shares_answers_between_processes_and_a_new_teacher_is_a_new_key(
    tmp_path: Path,
) -> None:
    d = trained_digits()
    images, spec = d.splits.test_images, d.splits.input_spec
    teacher = tmp_path / "teacher.onnx"
    teacher.write_bytes(d.onnx_path.read_bytes())
    folder = tmp_path / "answers"
    first = TeacherAnswers(folder).top1(teacher, spec, images)
    assert len(list(folder.glob("*.npy"))) == 1 and not list(folder.glob("*.tmp"))

    later = TeacherAnswers(folder)  # another process: nothing in memory, the file on disk
    np.testing.assert_array_equal(later.top1(teacher, spec, images), first)
    assert later.computed == 0

    _flipped(d.onnx_path, teacher)  # the teacher was retrained in place: its old answers are stale
    retrained = later.top1(teacher, spec, images)
    assert later.computed == 1 and len(list(folder.glob("*.npy"))) == 2
    np.testing.assert_array_equal(retrained, _direct(teacher, images))
    assert np.mean(retrained == first) < 0.5


def test_the_key_covers_the_split_and_the_preprocessing() -> None:
    d = trained_digits()
    images, spec = d.splits.test_images, d.splits.input_spec
    key = answers_key(d.onnx_path, spec, images)
    assert answers_key(d.onnx_path, spec, images.copy()) == key
    assert answers_key(d.onnx_path, spec, images[:-1]) != key
    other_pixels = images.copy()
    other_pixels[0, 0, 0, 0] ^= 1
    assert answers_key(d.onnx_path, spec, other_pixels) != key
    other_mean = spec.model_copy(update={"mean": tuple(m + 0.01 for m in spec.mean)})
    assert answers_key(d.onnx_path, other_mean, images) != key


@pytest.mark.parametrize("content", [b"", b"not a numpy file", None])
def test_a_torn_or_foreign_file_is_computed_again_and_replaced(
    tmp_path: Path, content: bytes | None
) -> None:
    d = trained_digits()
    images, spec = d.splits.test_images, d.splits.input_spec
    folder = tmp_path / "answers"
    folder.mkdir()
    path = folder / f"{answers_key(d.onnx_path, spec, images)}.npy"
    if content is None:  # a well-formed file of the wrong length
        np.save(path, np.zeros(3, dtype=np.int64))
    else:
        path.write_bytes(content)
    answers = TeacherAnswers(folder)
    got = answers.top1(d.onnx_path, spec, images)
    assert answers.computed == 1
    np.testing.assert_array_equal(got, _direct(d.onnx_path, images))
    np.testing.assert_array_equal(np.load(path), got)


def test_evaluate_accuracy_measures_agreement_from_the_answers_and_checks_their_length() -> None:
    d = trained_digits()
    images, labels, spec = d.splits.test_images, d.splits.test_labels, d.splits.input_spec
    session = make_session(d.onnx_path, "CPUExecutionProvider", 1)
    ours = _direct(d.onnx_path, images)
    same = evaluate_accuracy(session, spec, images, labels, dataset="digits", teacher_top1=ours)
    assert same.teacher_agreement == 1.0
    shifted = (ours + 1) % 10  # a teacher that never answers as we do
    never = evaluate_accuracy(session, spec, images, labels, dataset="digits", teacher_top1=shifted)
    assert never.teacher_agreement == 0.0
    assert (
        evaluate_accuracy(session, spec, images, labels, dataset="digits").teacher_agreement is None
    )
    with pytest.raises(ValueError, match="one teacher answer per image"):
        evaluate_accuracy(session, spec, images, labels, dataset="digits", teacher_top1=ours[:-1])
