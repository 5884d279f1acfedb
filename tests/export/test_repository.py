"""Publishing measured versions into a model repository, manifest round trip and re-measuring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.quantize import convert_fp16
from export.repository import (
    ArtifactInfo,
    EvalData,
    ProfileSettings,
    median_profile,
    next_version,
    profile_version,
    publish,
    remeasure,
    replace_profile,
    training_info,
    verify_model,
)
from service.contract.model_card import (
    LatencyProfile,
    ModelCard,
    ModelRepositoryError,
    ProfileRow,
    model_file,
    read_manifest,
    read_version_card,
    sha256_file,
)
from tests.support.trained_digits import trained_digits

FAST = ProfileSettings(threads=1, machine="test machine", min_runs=3, min_seconds=0.0)


def _info(name: str = "digits-baseline-wrn-10-1") -> ArtifactInfo:
    d = trained_digits()
    return ArtifactInfo(
        name=name,
        labels=d.splits.labels,
        input=d.splits.input_spec,
        training=training_info(d.meta),
    )


def _data() -> EvalData:
    d = trained_digits()
    return EvalData("digits", d.splits.test_images, d.splits.test_labels)


def test_publish_writes_layout_and_a_measured_card_that_round_trips(tmp_path: Path) -> None:
    d = trained_digits()
    card = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    path = tmp_path / "digits-baseline-wrn-10-1" / "1" / "model.onnx"
    assert path.read_bytes() == d.onnx_path.read_bytes()
    assert card.version == 1 and card.precision == "fp32" and card.derived_from is None
    assert card.sha256 == sha256_file(path) and card.size_bytes == path.stat().st_size
    assert card.metrics.n == 360 and abs(card.metrics.top1 - d.torch_top1) <= 1 / 360
    assert card.training.method == "baseline" and card.training.architecture == "wrn-10-1"
    assert card.training.epochs == d.meta.epochs and card.training.recipe == d.meta.recipe
    assert card.input == d.splits.input_spec and card.labels == tuple(str(i) for i in range(10))
    assert card.output.name == "logits" and card.output.kind == "logits"
    assert card.params > 10_000 and card.macs > card.params
    assert [r.batch_size for r in card.profile.rows] == [1, 8, 32, 128]
    assert card.profile.machine == "test machine"

    loaded = read_manifest(tmp_path / card.name)
    assert loaded == card
    raw = json.loads((tmp_path / card.name / "manifest.json").read_text())
    assert raw["schema_version"] == 1 and raw["input"]["layout"] == "NCHW"
    assert ModelCard.model_validate(raw) == card


def test_second_publish_is_version_two_and_keeps_the_first_record(tmp_path: Path) -> None:
    d = trained_digits()
    first = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    second = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    assert second.version == 2 == next_version(tmp_path / second.name) - 1
    assert [r.version for r in second.version_records()] == [2, 1]
    assert second.other_versions[0].sha256 == first.sha256
    assert model_file(tmp_path / second.name, 1).is_file()
    # Each version also has its own card, which the service serves that version with.
    for card in (first, second):
        own = read_version_card(tmp_path / card.name, card.version)
        assert own is not None and own.sha256 == card.sha256 and own.version == card.version


def test_a_version_folder_left_without_a_card_is_taken_over(tmp_path: Path) -> None:
    """A publish that died after copying its file but before writing a card left folder 2 with
    a model.onnx that nothing vouches for: the next publish is version 2, not 3 beside it."""
    d = trained_digits()
    first = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    orphan = model_file(tmp_path / first.name, 2)
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a publish")
    second = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    assert second.version == 2 and [r.version for r in second.version_records()] == [2, 1]
    assert sha256_file(orphan) == second.sha256
    assert verify_model(tmp_path / first.name) == []


def test_variant_card_records_precision_and_source(tmp_path: Path) -> None:
    d = trained_digits()
    info = ArtifactInfo(
        name="digits-baseline-wrn-10-1-fp16",
        labels=d.splits.labels,
        input=d.splits.input_spec,
        training=training_info(d.meta),
        precision="fp16",
        derived_from="digits-baseline-wrn-10-1",
    )
    half = convert_fp16(d.onnx_path, tmp_path / "half.onnx")
    card = publish(tmp_path / "repo", info, half, _data(), FAST)
    assert card.precision == "fp16" and card.derived_from == "digits-baseline-wrn-10-1"
    assert card.input.dtype == "float32"  # the fp16 graph keeps float32 inputs


def test_remeasure_rewrites_the_figures_only(tmp_path: Path) -> None:
    d = trained_digits()
    card = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    manifest = tmp_path / card.name / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["metrics"].update(top1=0.01, correct=None)  # stale, its hits too (they must add up)
    raw["params"] = 1
    manifest.write_text(json.dumps(raw))
    version_card = tmp_path / card.name / str(card.version) / "manifest.json"
    version_card.write_text(json.dumps(raw))  # the version's own card, as stale
    again = remeasure(tmp_path / card.name, _data(), FAST)
    assert again.metrics.top1 == card.metrics.top1 and again.params == card.params
    assert again.created_at == card.created_at and again.training == card.training
    assert read_manifest(tmp_path / card.name) == again
    # The service serves a version by its own card: it gets the new figures too.
    assert read_version_card(tmp_path / card.name, card.version) == again


def test_remeasure_without_the_profile_keeps_the_cards_latency(tmp_path: Path) -> None:
    """Accuracy figures a card lacks (calibration, written before it was kept) are measured;
    the latency profile, measured on a quiet machine, stays as it was."""
    d = trained_digits()
    card = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    manifest = tmp_path / card.name / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["metrics"].update(ece=None, nll=None)
    raw["profile"]["rows"][0]["p50_ms"] = 123.0  # stands for a figure from a quiet machine
    manifest.write_text(json.dumps(raw))
    again = remeasure(tmp_path / card.name, _data(), FAST, profile=False)
    assert again.metrics == card.metrics and again.metrics.ece is not None
    assert again.profile.rows[0].p50_ms == 123.0
    assert read_manifest(tmp_path / card.name) == again


def _profile(*rows: tuple[int, float, float]) -> LatencyProfile:
    return LatencyProfile(
        provider="CPUExecutionProvider",
        threads=2,
        machine="test machine",
        rows=tuple(ProfileRow(batch_size=b, p50_ms=p50, p99_ms=p99, images_per_s=b * 1e3 / p50)
                   for b, p50, p99 in rows),
    )  # fmt: skip


def test_interleaved_rounds_keep_the_median_of_each_figure() -> None:
    """One slow round (the machine busy for its turn) moves neither p50 nor throughput."""
    runs = [
        _profile((1, 0.20, 0.30), (32, 4.0, 5.0)),
        _profile((1, 0.90, 2.00), (32, 7.0, 9.0)),  # a slow stretch of the machine
        _profile((1, 0.22, 0.31), (32, 3.6, 4.4)),
    ]
    merged = median_profile(runs)
    assert merged.rounds == 3 and merged.threads == 2 and merged.machine == "test machine"
    b1, b32 = merged.row(1), merged.row(32)
    assert b1 is not None and b32 is not None
    assert (b1.p50_ms, b1.p99_ms) == (0.22, 0.31)
    assert (b32.p50_ms, b32.p99_ms) == (4.0, 5.0)
    assert b32.images_per_s == pytest.approx(32 * 1000 / 4.0)
    assert median_profile(runs[:1]).rounds == 1
    with pytest.raises(ValueError):
        median_profile([])


def test_a_profile_measured_again_replaces_the_cards_only(tmp_path: Path) -> None:
    d = trained_digits()
    card = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    again = profile_version(tmp_path / card.name, _data().images, FAST)
    assert [r.batch_size for r in again.rows] == [r.batch_size for r in card.profile.rows]
    assert read_manifest(tmp_path / card.name) == card  # measuring writes nothing
    merged = median_profile([card.profile, again, again])
    updated = replace_profile(tmp_path / card.name, merged)
    assert updated.profile == merged and updated.profile.rounds == 3
    assert updated.metrics == card.metrics and updated.created_at == card.created_at
    assert read_manifest(tmp_path / card.name) == updated
    assert read_version_card(tmp_path / card.name, card.version) == updated


def test_bad_name_and_missing_file_are_repository_errors(tmp_path: Path) -> None:
    d = trained_digits()
    with pytest.raises(ModelRepositoryError, match="invalid model name 'Digits KD'"):
        publish(tmp_path, _info("Digits KD"), d.onnx_path, _data(), FAST)
    card = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    model_file(tmp_path / card.name, 1).unlink()
    with pytest.raises(ModelRepositoryError, match="model file of version 1 is missing"):
        remeasure(tmp_path / card.name, _data(), FAST)


def test_agreement_with_the_teacher_is_measured_into_the_card(tmp_path: Path) -> None:
    from dataclasses import replace

    import onnx
    from onnx import numpy_helper

    d = trained_digits()
    alone = publish(tmp_path, _info(), d.onnx_path, _data(), FAST)
    assert alone.metrics.teacher_agreement is None  # no teacher, no baseline
    spec = d.splits.input_spec
    copy = publish(
        tmp_path, replace(_info("copy"), teacher=(d.onnx_path, spec)), d.onnx_path, _data(), FAST
    )
    assert copy.metrics.teacher_agreement == 1.0  # the same network agrees everywhere
    # A network with every weight negated disagrees with the original on most inputs.
    graph = onnx.load(str(d.onnx_path))
    for init in graph.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    flipped = tmp_path / "flipped.onnx"
    onnx.save(graph, str(flipped))
    other = publish(
        tmp_path, replace(_info("other"), teacher=(d.onnx_path, spec)), flipped, _data(), FAST
    )
    assert other.metrics.teacher_agreement is not None and other.metrics.teacher_agreement < 0.5
    # Negated BatchNorm variances make non-finite logits: no calibration figure, not a crash.
    assert alone.metrics.ece is not None and other.metrics.ece is None is other.metrics.nll


def test_students_of_one_teacher_share_its_answers_on_the_split(tmp_path: Path) -> None:
    from dataclasses import replace

    d = trained_digits()
    data, teacher = _data(), (d.onnx_path, d.splits.input_spec)
    fp32 = publish(tmp_path, replace(_info("a"), teacher=teacher), d.onnx_path, data, FAST)
    fp16 = convert_fp16(d.onnx_path, tmp_path / "fp16.onnx")
    half = publish(tmp_path, replace(_info("a-fp16"), teacher=teacher), fp16, data, FAST)
    assert data.answers.computed == 1  # the teacher ran over the split once for both cards
    assert fp32.metrics.teacher_agreement == 1.0
    assert half.metrics.teacher_agreement is not None and half.metrics.teacher_agreement > 0.99
