"""The soft-label store: stored teacher logits train exactly as a live teacher, and are shared."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from export.checkpoint import load_trained
from export.training import TrainResult, run_training
from export.training.logs import read_log
from export.training.soft_labels import SOFT_LABEL_DIR

FAST: dict[str, Any] = {
    "dataset": "digits",
    "student": "wrn-10-1",
    "epochs": 2,
    "progress": False,
    "threads": 1,
    "augment": True,  # a different crop per epoch: the store must replay the epoch's own batches
}


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A WRN-16-1 teacher trained once for the module."""
    out = tmp_path_factory.mktemp("teacher")
    return run_training({**FAST, "student": "wrn-16-1", "epochs": 3, "out_dir": str(out)})


@pytest.fixture
def teacher(trained_teacher: TrainResult, tmp_path: Path) -> Path:
    """A copy of the teacher of this test alone (its store starts empty)."""
    copy = tmp_path / "teacher" / "trained.pt"
    copy.parent.mkdir()
    shutil.copy(trained_teacher.artifact_path, copy)
    return copy


def _events(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_log(out) if r.get("event") == "soft labels"]


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return load_trained(result.artifact_path)[0].state_dict()


def test_stored_logits_train_the_same_student_as_a_live_teacher(
    teacher: Path, tmp_path: Path
) -> None:
    """KD from the store and KD from the teacher run live give the same weights: the store holds
    the teacher's logits on exactly the batches training sees, epoch by epoch."""
    cfg = {**FAST, "method": "kd", "teacher": str(teacher)}
    live = run_training({**cfg, "soft_label_cache": False, "out_dir": str(tmp_path / "live")})
    stored = run_training({**cfg, "out_dir": str(tmp_path / "stored")})
    assert not _events(tmp_path / "live")
    assert [e["computed"] for e in _events(tmp_path / "stored")] == [True, True]
    assert sorted(p.name for p in (teacher.parent / SOFT_LABEL_DIR).glob("*/epoch-*.npy")) == [
        "epoch-0000.npy",
        "epoch-0001.npy",
    ]
    a, b = _weights(live), _weights(stored)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert stored.test_top1 == pytest.approx(live.test_top1, abs=0.01)


def test_later_runs_on_the_same_stream_read_the_logits_instead_of_running_the_teacher(
    teacher: Path, tmp_path: Path
) -> None:
    """MIMIC and Rocket+KD after KD reuse every epoch; another seed is another stream."""
    run_training({**FAST, "method": "kd", "teacher": str(teacher), "out_dir": str(tmp_path / "kd")})
    run_training(
        {**FAST, "method": "mimic", "teacher": str(teacher), "out_dir": str(tmp_path / "mimic")}
    )
    run_training(
        {
            **FAST,
            "method": "rocket-kd",
            "booster": "wrn-16-1",
            "teacher": str(teacher),
            "out_dir": str(tmp_path / "rkd"),
        }
    )
    assert [e["computed"] for e in _events(tmp_path / "kd")] == [True, True]
    assert [e["computed"] for e in _events(tmp_path / "mimic")] == [False, False]
    assert [e["computed"] for e in _events(tmp_path / "rkd")] == [False, False]
    run_training(
        {
            **FAST,
            "method": "kd",
            "teacher": str(teacher),
            "seed": 1,
            "out_dir": str(tmp_path / "s1"),
        }
    )
    assert [e["computed"] for e in _events(tmp_path / "s1")] == [True, True]
    assert len(list((teacher.parent / SOFT_LABEL_DIR).iterdir())) == 2


def test_the_console_says_where_each_epochs_logits_come_from(
    teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Computing an epoch's logits takes minutes on CIFAR-10 before its bar starts: say so."""
    cfg = {**FAST, "teacher": str(teacher), "progress": True}
    run_training({**cfg, "method": "kd", "out_dir": str(tmp_path / "kd")})
    computed = capsys.readouterr().err
    run_training({**cfg, "method": "mimic", "out_dir": str(tmp_path / "mimic")})
    read = capsys.readouterr().err
    images = next(r for r in read_log(tmp_path / "kd") if r["event"] == "start")["train_images"]
    for epoch in (1, 2):
        said = f"epoch {epoch}/2: the teacher's logits of {images:,} images"
        assert re.search(rf"{said} computed in [\d.]+ s \([\d,]+ img/s\)", computed)
        assert re.search(rf"{said} read from the store in [\d.]+ s", read)


def test_methods_that_need_more_than_logits_run_the_teacher(teacher: Path, tmp_path: Path) -> None:
    """FitNets' hints come from an inner stage of the teacher: no store for the one-stage
    variant, nor for stage 1 of the two-stage one; stage 2 (KD) uses it."""
    one = tmp_path / "one"
    run_training(
        {**FAST, "method": "fitnet-one-stage", "teacher": str(teacher), "out_dir": str(one)}
    )
    assert not _events(one)
    two = tmp_path / "two"
    cfg = {**FAST, "method": "fitnet", "teacher": str(teacher), "hint_epochs": 1}
    run_training({**cfg, "out_dir": str(two)})
    assert not _events(two / "fitnet-hints")
    assert [e["epoch"] for e in _events(two)] == [1]


def test_a_retrained_teacher_gets_a_new_store(teacher: Path, tmp_path: Path) -> None:
    """The store is keyed by the teacher file's digest: other weights never read old logits."""
    cfg = {**FAST, "method": "kd", "teacher": str(teacher), "epochs": 1}
    run_training({**cfg, "out_dir": str(tmp_path / "a")})
    model, meta = load_trained(teacher)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    from export.checkpoint import save_trained

    save_trained(teacher, model, meta)
    run_training({**cfg, "out_dir": str(tmp_path / "b")})
    assert [e["computed"] for e in _events(tmp_path / "b")] == [True]
    assert len(list((teacher.parent / SOFT_LABEL_DIR).iterdir())) == 2


def _store_in_a_process(teacher_path: str, queue: Any) -> None:
    """Open the store of ``teacher_path`` and ask for epoch 0 (slow batches, so both overlap)."""
    import time
    from contextlib import nullcontext

    from export.checkpoint import load_trained as load
    from export.training.soft_labels import SoftLabelStore

    model, _ = load(teacher_path)

    def batches(epoch: int) -> Any:
        gen = torch.Generator().manual_seed(epoch)
        for _ in range(4):
            time.sleep(0.2)
            yield torch.rand(8, 1, 8, 8, generator=gen), torch.zeros(8, dtype=torch.long)

    store = SoftLabelStore(
        model, Path(teacher_path), {"seed": 0}, batches, nullcontext, torch.device("cpu")
    )
    got = store.epoch(0)
    queue.put((got.computed, got.logits.numpy().tolist()))


def test_two_lanes_asking_for_one_epoch_compute_it_once(teacher: Path) -> None:
    """Two processes (two zoo lanes) reaching the same epoch at once: one computes under the
    epoch's file lock, the other waits and reads the same logits."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_store_in_a_process, args=(str(teacher), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(computed for computed, _ in results) == [False, True]
    assert results[0][1] == results[1][1] and len(results[0][1]) == 32
