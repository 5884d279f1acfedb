"""Adoption: a zoo whose work folder was lost rebuilds what a repository serves, trains the rest."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from export.adopt import recipe_changes
from export.checkpoint import load_trained
from export.evaluate import unpack_hits
from export.pick import pick
from export.training import resolve_config
from export.training.logs import read_log
from export.zoo import ZooOptions, run_zoo
from export.zoo_config import ZooError, config_path, load_zoo_config
from export.zoo_status import format_status, zoo_status
from service.contract.model_card import ModelCard, model_dirs, read_manifest, write_manifest
from tests.support.onnx_repo import digits_uint8_split
from tests.support.reeval import agreement_by_hand

TEACHER, KD = "digits-teacher-resnet20", "digits-kd-resnet8"


def _options(**changes: object) -> ZooOptions:
    base = {
        "max_epochs": 1,
        "max_train_images": 200,
        "profile_runs": 3,
        "threads": 1,
        "torch_threads": 1,
        "only": ("kd-resnet8",),
        "resume": True,
    }
    return ZooOptions(**{**base, **changes})  # type: ignore[arg-type]


def _zoo(out: Path, **changes: object) -> list[str]:
    lines: list[str] = []
    run_zoo("digits", out, _options(**changes), log=lines.append)
    return lines


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A digits zoo cut to the teacher and KD (one epoch on 200 images), and the repository
    ``pick`` made of it: what a machine left behind in git before its work folder was lost."""
    root = tmp_path_factory.mktemp("adopt")
    _zoo(root / "zoo")
    pick(root / "zoo", root / "models")
    assert {d.name for d in model_dirs(root / "models")} == {
        TEACHER,
        f"{TEACHER}-int8",
        KD,
        f"{KD}-int8",
    }
    return root / "zoo", root / "models"


def _copy(models: Path, tmp_path: Path) -> Path:
    """A copy of the served repository for a test to change."""
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    return copy


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_trained(path)[0].state_dict()


def test_a_lost_work_folder_adopts_what_the_repository_serves_and_trains_nothing(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    old_zoo, models = served
    out = tmp_path / "zoo"  # the new machine: an empty zoo folder; lanes as `make cifar-zoo` runs
    _zoo(out, adopt_from=models, lanes=2)
    lanes = "".join(p.read_text() for p in sorted((out / ".work").glob("lane-*.log")))
    for name in (TEACHER, KD):
        assert f"[{name}] adopted from {models / name} (v1, not trained again): 1 epochs" in lanes
        assert f"[{name}] already published in {out}: kept" in lanes
    assert "parity ok" not in lanes  # nothing exported again
    for run in ("teacher-resnet20", "kd-resnet8"):  # nor trained: no epoch in the runs' logs
        events = [r["event"] for r in read_log(out / ".work" / run)]
        assert events == ["adopted"], (run, events)
    # The rebuilt networks are the trained ones, weight for weight.
    for run in ("teacher-resnet20", "kd-resnet8"):
        new, old = (
            _weights(out / ".work" / run / "trained.pt"),
            _weights(old_zoo / ".work" / run / "trained.pt"),
        )
        differ = [k for k in old if not torch.equal(new[k], old[k])]
        # BatchNorm's step counter is not a weight (nothing reads it in eval mode)
        assert all(k.endswith("num_batches_tracked") for k in differ), (run, differ)
    # The models come over as they were served: same files, same cards.
    for name in (TEACHER, f"{TEACHER}-int8", KD, f"{KD}-int8"):
        assert read_manifest(out / name) == read_manifest(models / name)
    assert (out / "REPORT.md").is_file()
    config = load_zoo_config(config_path("digits"))
    statuses = {s.name: s for s in zoo_status(config, out / ".work")}
    assert statuses["kd-resnet8"].state == "adopted" and statuses["kd-resnet8"].epochs_done == 1
    assert "2 adopted" in format_status(list(statuses.values()), out / ".work")
    # Run again: finished here now, so nothing is adopted (or trained) twice.
    again = _zoo(out, adopt_from=models)
    assert not any("adopted from" in line or "trained otherwise" in line for line in again)
    assert sum("already published" in line for line in again) == 2


def test_a_student_the_repository_lacks_is_distilled_from_the_adopted_teacher(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    _, models = served
    partial = _copy(models, tmp_path)
    for folder in partial.glob(f"{KD}*"):
        shutil.rmtree(folder)  # the teacher was committed, the student not yet
    out = tmp_path / "zoo"
    lines = _zoo(out, adopt_from=partial)
    assert any(line.startswith(f"[{TEACHER}] adopted from") for line in lines)
    assert any(line.startswith(f"[{KD}] trained: 1 epochs") for line in lines)
    kd = read_manifest(out / KD)
    assert kd.training.teacher == TEACHER
    _, x_te, _, _ = digits_uint8_split()
    by_hand = agreement_by_hand(out / KD, out / TEACHER, x_te)
    assert kd.metrics.teacher_agreement == pytest.approx(by_hand, abs=1e-9)


def test_a_network_trained_to_another_recipe_is_trained_again(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    _, models = served
    lines = _zoo(tmp_path / "zoo", adopt_from=models, max_epochs=2, only=("teacher-resnet20",))
    said = "\n".join(lines)
    assert re.search(
        rf"\[{TEACHER}\] not adopted from {models}: trained otherwise: epochs: 1(\.0)? != 2", said
    ), said
    assert f"[{TEACHER}] trained: 2 epochs" in said


def test_recipe_changes_ignore_where_the_data_lives_but_not_the_seed(
    served: tuple[Path, Path],
) -> None:
    _, models = served
    card = read_manifest(models / KD)
    config = resolve_config(
        {**card.training.config, "data_dir": "/elsewhere", "teacher": "/new/machine/trained.pt"}
    )
    assert recipe_changes(card, config, TEACHER) == []
    assert recipe_changes(card, {**config, "seed": 1}, TEACHER) == ["seed: 0 != 1"]
    assert recipe_changes(card, config, "another-teacher") == [
        f"teacher: {TEACHER!r} != 'another-teacher'"
    ]
    int8 = read_manifest(models / f"{KD}-int8")
    assert recipe_changes(int8, config, TEACHER)[-1].startswith("precision: int8 variant")


def test_adopting_needs_resume(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="use it with --resume"):
        run_zoo("digits", tmp_path / "zoo", _options(adopt_from=tmp_path, resume=False))


def test_an_unreadable_card_is_reported_and_the_network_trained(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    _, models = served
    broken = _copy(models, tmp_path)
    (broken / TEACHER / "manifest.json").write_text("{not json", encoding="utf-8")
    lines = _zoo(tmp_path / "zoo", adopt_from=broken, only=("teacher-resnet20",))
    said = "\n".join(lines)
    assert f"[{TEACHER}] not adopted from {broken}: " in said and "manifest" in said
    assert f"[{TEACHER}] trained: 1 epochs" in said


def test_a_student_of_another_teacher_is_not_adopted(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    """The source serves the KD student beside the teacher it was distilled from; when that
    teacher cannot be adopted (here: trained with another seed) the zoo trains its own, and the
    student, though trained to the same recipe, learnt from another network: trained again."""
    _, models = served
    config = {**load_zoo_config(config_path("digits")), "seed": 1}
    seed1 = tmp_path / "zoo.yaml"
    seed1.write_text(yaml.safe_dump(config), encoding="utf-8")
    other = tmp_path / "other"
    run_zoo("digits", other, _options(only=("teacher-resnet20",)), config_file=seed1, log=print)
    mixed = _copy(models, tmp_path)
    for name in (TEACHER, f"{TEACHER}-int8"):
        shutil.rmtree(mixed / name)
        shutil.copytree(other / name, mixed / name)
    said = "\n".join(_zoo(tmp_path / "zoo", adopt_from=mixed))
    assert f"[{TEACHER}] not adopted from {mixed}: trained otherwise: seed: 1 != 0" in said
    other_teacher = f"teacher: the zoo's {TEACHER} is not the one {mixed} serves"
    assert f"[{KD}] not adopted from {mixed}: trained otherwise: {other_teacher}" in said
    assert f"[{KD}] trained: 1 epochs" in said


def test_cards_served_without_per_image_hits_get_them_on_adoption(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    """A repository published before cards kept ``metrics.correct``: adoption measures the hits
    (the paired noise test of the zoo's second seeds needs them) and keeps the rest of the card."""
    _, models = served
    old = _copy(models, tmp_path)
    for manifest in old.glob("*/**/manifest.json"):
        card = ModelCard.model_validate_json(manifest.read_text(encoding="utf-8"))
        stripped = card.model_copy(
            update={"metrics": card.metrics.model_copy(update={"correct": None})}
        )
        write_manifest(manifest.parent, stripped)
    assert all(read_manifest(old / n).metrics.correct is None for n in (TEACHER, KD))
    out = tmp_path / "zoo"
    _zoo(out, adopt_from=old)
    for name in (TEACHER, f"{TEACHER}-int8", KD, f"{KD}-int8"):
        served_card, adopted = read_manifest(models / name), read_manifest(out / name)
        assert adopted.metrics.correct == served_card.metrics.correct, name
        hits = unpack_hits(str(adopted.metrics.correct), adopted.metrics.n)
        assert hits.mean() == pytest.approx(adopted.metrics.top1, abs=1e-12)
        assert adopted.profile == served_card.profile  # latency is not measured again
        assert adopted.metrics == served_card.metrics, name
        version = out / name / str(adopted.version) / "manifest.json"
        if version.is_file():  # the served version's own card gets them too
            own = ModelCard.model_validate_json(version.read_text(encoding="utf-8"))
            assert own.metrics.correct == adopted.metrics.correct, name
