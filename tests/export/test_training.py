"""run_training on digits: every method learns, the rocket switches work, resuming is exact."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from export.checkpoint import load_trained
from export.data import load_dataset
from export.devices import machine_of
from export.models import build_model
from export.training import ConfigError, TrainResult, pause, run_training
from export.training.logs import Progress, RunLog, epoch_end_times, read_log
from export.training.loop import ResumeError
from export.training.result import RESULT_FILENAME
from export.training.runtime import native_bf16, resolve_precision
from service.contract.model_card import InputSpec
from service.contract.preprocess import normalize_uint8

FAST: dict[str, Any] = {
    "dataset": "digits",
    "student": "wrn-10-1",
    "epochs": 4,
    "progress": False,
    "threads": 1,
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A WRN-16-1 teacher trained once for the module."""
    out = tmp_path_factory.mktemp("teacher")
    return run_training({**FAST, "student": "wrn-16-1", "out_dir": str(out)})


def _onnx_free_accuracy(artifact: Path) -> float:
    """Accuracy of a reloaded artifact fed by the service's numpy preprocessing."""
    model, meta = load_trained(artifact)
    data = load_dataset(meta.dataset)
    x = torch.from_numpy(normalize_uint8(data.test_images, InputSpec(**meta.input_spec)))
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    return float(np.mean(pred == data.test_labels))


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("baseline", {}),
        ("kd", {"teacher": "TEACHER"}),
        ("fitnet", {"teacher": "TEACHER"}),
        ("fitnet-one-stage", {"teacher": "TEACHER"}),
        ("mimic", {"teacher": "TEACHER"}),
        ("rocket", {"booster": "wrn-16-1"}),
        ("rocket-kd", {"booster": "wrn-16-1", "teacher": "TEACHER"}),
    ],
)
def test_every_method_reaches_90_percent_on_digits(
    method: str, options: dict[str, Any], teacher: TrainResult, tmp_path: Path
) -> None:
    options = {k: str(teacher.artifact_path) if v == "TEACHER" else v for k, v in options.items()}
    result = run_training({**FAST, "method": method, **options, "out_dir": str(tmp_path)})
    assert result.completed and result.epochs_done == 4
    assert result.test_top1 >= 0.90, f"{method}: {result.test_top1:.3f}"
    # The saved artifact, fed exactly as the service feeds it, reproduces the figure.
    assert abs(_onnx_free_accuracy(result.artifact_path) - result.test_top1) <= 2 / 360
    _, meta = load_trained(result.artifact_path)
    assert meta.arch == "wrn-10-1" and meta.method == method and meta.dataset == "digits"
    assert meta.test_top1 == pytest.approx(result.test_top1)
    assert meta.wall_time_s > 0 and meta.device.startswith("cpu") and meta.recipe
    if method.startswith("rocket"):
        assert meta.teacher == "wrn-16-1"
        _, booster_meta = load_trained(result.extra_artifacts["booster"])
        assert booster_meta.arch == "wrn-16-1" and booster_meta.test_top1 > 0.5
    # fitnet: a quarter of the epochs were its hint stage, logged in its own sub-run folder.
    main_epochs = 3 if method == "fitnet" else 4
    events = [r["event"] for r in read_log(tmp_path)]
    # methods that need only the teacher's logits read them from the store before each epoch
    per_epoch = (
        ["soft labels", "epoch"] if method in ("kd", "fitnet", "mimic", "rocket-kd") else ["epoch"]
    )
    assert events == ["start", *per_epoch * main_epochs, "end"]
    epoch = read_log(tmp_path)[-2]
    assert {"loss", "train_acc", "test_top1", "img_per_s", "lr"} <= set(epoch)


@pytest.mark.parametrize(
    "switches",
    [
        {"sharing": "interval"},
        {"sharing": "none", "gradient_block": False},
        {"sharing": "bottom", "joint": False},
    ],
)
def test_rocket_ablation_switches_train(switches: dict[str, Any], tmp_path: Path) -> None:
    cfg = {**FAST, "method": "rocket", "booster": "wrn-16-1", **switches, "out_dir": str(tmp_path)}
    result = run_training(cfg)
    assert result.test_top1 >= 0.90
    if switches.get("joint") is False:
        # The booster was trained first on its own and stayed frozen during the rocket phase.
        pretrained, _ = load_trained(tmp_path / "booster-pretrain" / "trained.pt")
        final, _ = load_trained(result.extra_artifacts["booster"])
        pairs = zip(pretrained.state_dict().items(), final.state_dict().values(), strict=True)
        for (name, a), b in pairs:
            assert torch.equal(a, b), name
        # The booster's own training is part of the method: its time is in the run's.
        booster = json.loads((tmp_path / "booster-pretrain" / RESULT_FILENAME).read_text())
        booster_s = booster["result"]["wall_time_s"]
        light_s = sum(r["epoch_time_s"] for r in read_log(tmp_path) if r["event"] == "epoch")
        assert booster_s > 0 and light_s > 0
        assert result.wall_time_s == pytest.approx(booster_s + light_s, abs=0.01)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_trained(path)[0].state_dict()


def _fitnet(teacher: TrainResult, out: Path, **options: Any) -> TrainResult:
    cfg = {**FAST, "method": "fitnet", "teacher": str(teacher.artifact_path), **options}
    return run_training({**cfg, "out_dir": str(out)})


def test_fitnet_stage_one_trains_only_the_guided_layers_then_stage_two_trains_all(
    teacher: TrainResult, tmp_path: Path
) -> None:
    result = _fitnet(teacher, tmp_path, epochs=2, hint_epochs=1)
    assert result.completed and result.epochs_done == 2 and result.test_top1 >= 0.5
    stage1 = _state(tmp_path / "fitnet-hints" / "trained.pt")
    torch.manual_seed(FAST.get("seed", 0))  # the run seeds before building the student
    initial = build_model("wrn-10-1", in_channels=1, num_classes=10, image_size=8).state_dict()
    # wrn-10-1 has three stages: the middle one is guided; above it stage 3 and the head.
    upper = [k for k in initial if k.startswith(("stages.2.", "head."))]
    lower = [k for k in initial if k.startswith(("stem.", "stages.0.", "stages.1."))]
    assert upper and lower and len(upper) + len(lower) == len(initial)
    for key in upper:  # weights and batch-norm statistics alike
        assert torch.equal(stage1[key], initial[key]), key
    lower_weights = [k for k in lower if k.endswith("weight")]
    assert all(not torch.equal(stage1[k], initial[k]) for k in lower_weights)
    final = _state(result.artifact_path)
    weights = [k for k in final if k.endswith(("weight", "bias"))]
    assert all(not torch.equal(final[k], stage1[k]) for k in weights)
    _, meta = load_trained(result.artifact_path)
    assert meta.method == "fitnet" and meta.epochs == 2 and meta.config["hint_epochs"] == 1
    assert "2 epochs (1 of stage 1, hints; 1 of stage 2, KD)" in (meta.recipe or "")
    stage1_log = read_log(tmp_path / "fitnet-hints")
    assert [r["event"] for r in stage1_log] == ["start", "epoch", "end"]
    assert stage1_log[0]["config"]["method"] == "fitnet-hints"
    assert set(stage1_log[1]) >= {"hint"} and "ce" not in stage1_log[1]
    assert meta.wall_time_s > load_trained(tmp_path / "fitnet-hints" / "trained.pt")[1].wall_time_s


def test_fitnet_resumes_within_stage_one_and_across_the_stage_boundary(
    teacher: TrainResult, tmp_path: Path
) -> None:
    options = {"epochs": 4, "hint_epochs": 2}
    whole = _fitnet(teacher, tmp_path / "whole", **options)
    part = tmp_path / "part"
    first = _fitnet(teacher, part, **options, stop_after=1)  # stopped inside stage 1
    assert not first.completed and first.epochs_done == 1 and first.epochs_run == 1
    assert not (part / "log.jsonl").exists()
    second = _fitnet(teacher, part, **options, stop_after=2, resume=True)  # across the boundary
    assert not second.completed and second.epochs_done == 3 and second.epochs_run == 2
    third = _fitnet(teacher, part, **options, resume=True)  # inside stage 2
    assert third.completed and third.epochs_done == 4 and third.epochs_run == 1
    hint_events = [r["event"] for r in read_log(part / "fitnet-hints")]
    # Stage 1 resumed once and was not run again when the run resumed in stage 2.
    assert hint_events == ["start", "epoch", "stopped", "resume", "epoch", "end"]
    events = [r["event"] for r in read_log(part)]
    # stage 2 (KD) reads the teacher's logits that the uninterrupted run stored
    assert events == [
        "start", "soft labels", "epoch", "stopped", "resume", "soft labels", "epoch", "end"
    ]  # fmt: skip
    assert not any(r["computed"] for r in read_log(part) if r["event"] == "soft labels")
    a, b = _state(whole.artifact_path), _state(third.artifact_path)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert third.test_top1 == whole.test_top1
    # The learning curve spans both stages and survives each resume: the hint stage first,
    # marked, then stage 2 numbered after it, as in the uninterrupted run.
    stages = [(r["epoch"], r.get("stage")) for r in load_trained(third.artifact_path)[1].history]
    assert stages == [(1, "hint"), (2, "hint"), (3, None), (4, None)]
    ends = [r["finished_at"] for r in third.history]
    assert None not in ends and ends == sorted(ends)  # stage 1's from its own log
    assert [r["test_top1"] for r in third.history] == [r["test_top1"] for r in whole.history]
    devices = {load_trained(r.artifact_path)[1].device for r in (whole, third)}
    assert len(devices) == 1 and ":" not in devices.pop()  # one device: named alone


def test_a_run_past_its_first_stage_without_that_stage_is_refused_not_retrained(
    teacher: TrainResult, tmp_path: Path
) -> None:
    """A run folder copied back without its subfolders: resuming would train the first stage
    again for nothing and record it as the one the checkpoint went on from."""
    import shutil

    fitnet = tmp_path / "fitnet"
    _fitnet(teacher, fitnet, epochs=4, hint_epochs=2, stop_after=3)  # stopped inside stage 2
    shutil.rmtree(fitnet / "fitnet-hints")
    with pytest.raises(ConfigError, match=r"past its hint stage .*fitnet-hints holds no finished"):
        _fitnet(teacher, fitnet, epochs=4, hint_epochs=2, resume=True)
    assert not (fitnet / "fitnet-hints").exists()  # nothing trained
    (fitnet / "checkpoint.pt").unlink()  # the way out the error names: from the start
    again = _fitnet(teacher, fitnet, epochs=4, hint_epochs=2, resume=True)
    assert again.completed and again.epochs_run == 4

    rocket = tmp_path / "rocket"
    cfg = {**FAST, "method": "rocket", "booster": "wrn-16-1", "joint": False, "epochs": 2}
    run_training({**cfg, "out_dir": str(rocket), "stop_after": 1})
    assert (rocket / "booster-pretrain" / RESULT_FILENAME).is_file()
    shutil.rmtree(rocket / "booster-pretrain")
    with pytest.raises(ConfigError, match="past its booster's own training"):
        run_training({**cfg, "out_dir": str(rocket), "resume": True})
    # a run stopped inside its first stage has no checkpoint of its own yet: it simply resumes
    part = tmp_path / "part"
    _fitnet(teacher, part, epochs=4, hint_epochs=2, stop_after=1)
    assert _fitnet(teacher, part, epochs=4, hint_epochs=2, resume=True).completed


def test_a_fitnet_begun_elsewhere_names_each_device_with_the_whole_runs_epochs(
    teacher: TrainResult, tmp_path: Path
) -> None:
    """Stage 1's first epoch on an accelerator machine (its log's start record stands for it),
    the rest here: the epochs are the learning curve's, stage 1 first."""
    options = {"epochs": 4, "hint_epochs": 2}
    first = _fitnet(teacher, tmp_path, **options, stop_after=1)
    assert not first.completed
    hints = tmp_path / "fitnet-hints" / "log.jsonl"
    lines = hints.read_text(encoding="utf-8").splitlines()
    start = json.loads(lines[0])
    here, start["device"] = start["device"], "cuda (NVIDIA H200)"
    hints.write_text("\n".join([json.dumps(start), *lines[1:]]) + "\n", encoding="utf-8")
    done = _fitnet(teacher, tmp_path, **options, resume=True)
    assert done.completed
    meta = load_trained(done.artifact_path)[1]
    assert meta.device == f"cuda (NVIDIA H200): epoch 1; {machine_of(here)}: epochs 2-4"


def test_a_run_stopped_inside_an_epoch_resumes_at_its_last_saved_step(
    teacher: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint_minutes 0 saves after every step; a process that dies right after the save at
    step 3 of epoch 2 resumes there (same batches, same teacher logits, same schedule) and ends
    with the weights of a run never stopped."""
    from export.training.loop import Trainer

    cfg = {**FAST, "method": "kd", "teacher": str(teacher.artifact_path), "epochs": 3,
           "augment": True, "checkpoint_minutes": 0}  # fmt: skip
    whole = run_training({**cfg, "out_dir": str(tmp_path / "whole")})
    save = Trainer.save_checkpoint

    def save_then_die(self: Trainer, fingerprint: dict[str, Any]) -> None:
        save(self, fingerprint)
        if self.state.epoch == 1 and self.state.step == 3:
            raise KeyboardInterrupt  # the session ends right after a mid-epoch save

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run_training({**cfg, "out_dir": str(part)})
    monkeypatch.undo()
    blob = torch.load(part / "checkpoint.pt", weights_only=True)
    assert (blob["epoch"], blob["step"]) == (1, 3) and blob["partial"]["seen"] > 0
    bars: list[Progress] = []

    class Recorded(Progress):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr("export.training.loop.Progress", Recorded)
    resumed = run_training({**cfg, "out_dir": str(part), "resume": True})
    assert resumed.completed and resumed.epochs_run == 2
    # the resumed epoch's bar rates only the images it trained on, not those before the stop
    per_epoch = bars[1].images
    assert per_epoch > 0 and bars[0].images == per_epoch - blob["partial"]["seen"]
    a, b = _state(whole.artifact_path), _state(resumed.artifact_path)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.test_top1 == whole.test_top1
    epochs = [r for r in read_log(part) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    full = [r for r in read_log(tmp_path / "whole") if r["event"] == "epoch"]
    # the resumed epoch's record counts the steps before the stop too
    assert epochs[1]["train_acc"] == full[1]["train_acc"] and epochs[1]["loss"] == pytest.approx(
        full[1]["loss"], rel=1e-5
    )


@pytest.mark.parametrize("method", ["mimic", "fitnet"])
def test_shallow_student_learns_from_the_teacher(
    method: str, teacher: TrainResult, tmp_path: Path
) -> None:
    cfg = {**FAST, "method": method, "student": "shallow-2-16"}
    result = run_training({**cfg, "teacher": str(teacher.artifact_path), "out_dir": str(tmp_path)})
    assert result.test_top1 >= 0.90, f"{method}: {result.test_top1:.3f}"


def test_teacher_given_as_an_architecture_is_trained_first(tmp_path: Path) -> None:
    cfg = {**FAST, "method": "kd", "teacher": "wrn-10-1", "teacher_epochs": 2, "epochs": 1}
    result = run_training({**cfg, "out_dir": str(tmp_path)})
    teacher_path = result.extra_artifacts["teacher"]
    assert teacher_path == tmp_path / "teacher" / "trained.pt"
    _, meta = load_trained(teacher_path)
    assert meta.arch == "wrn-10-1" and meta.epochs == 2 and meta.method == "baseline"
    assert load_trained(result.artifact_path)[1].teacher == "wrn-10-1"
    assert [r["event"] for r in read_log(tmp_path / "teacher")][-1] == "end"


def test_resumed_run_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = {**FAST, "method": "rocket", "booster": "wrn-16-1", "epochs": 3}
    whole = run_training({**cfg, "out_dir": str(tmp_path / "whole")})
    part = run_training({**cfg, "out_dir": str(tmp_path / "part"), "stop_after": 1})
    assert not part.completed and part.epochs_done == 1 and not part.artifact_path.exists()
    resumed = run_training({**cfg, "out_dir": str(tmp_path / "part"), "resume": True})
    assert resumed.completed and resumed.epochs_done == 3
    for name in ("artifact_path",):
        a, _ = load_trained(getattr(whole, name))
        b, _ = load_trained(getattr(resumed, name))
        for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(va, vb), key
    assert resumed.test_top1 == whole.test_top1
    events = [r["event"] for r in read_log(tmp_path / "part")]
    assert events == ["start", "epoch", "stopped", "resume", "epoch", "epoch", "end"]
    # Resuming a finished run returns its result without training again.
    again = run_training({**cfg, "out_dir": str(tmp_path / "part"), "resume": True})
    assert again.test_top1 == resumed.test_top1 and len(read_log(tmp_path / "part")) == 7
    # Every epoch's record is kept across the stop, in the artifact and in the result.
    _, meta = load_trained(resumed.artifact_path)
    assert [r["epoch"] for r in meta.history] == [1, 2, 3]
    assert [r["loss"] for r in meta.history] == [r["loss"] for r in whole.history]
    assert meta.history[-1]["test_top1"] == round(resumed.test_top1, 6)
    assert again.history == resumed.history == meta.history
    # Each epoch ended when the run's log says, across the stop (the records have no clock).
    logged = [r["time"] for r in read_log(tmp_path / "part") if r["event"] == "epoch"]
    assert [r["finished_at"] for r in meta.history] == logged == sorted(logged)
    # The booster trained beside the light net carries no curve (the records are the student's).
    assert load_trained(resumed.extra_artifacts["booster"])[1].history == []


def test_resume_with_a_changed_config_is_refused(tmp_path: Path) -> None:
    run_training({**FAST, "epochs": 2, "out_dir": str(tmp_path), "stop_after": 1})
    with pytest.raises(ResumeError, match=r"different config \(lr\)"):
        run_training({**FAST, "epochs": 2, "out_dir": str(tmp_path), "resume": True, "lr": 0.01})


def test_max_train_images_limits_the_budget(tmp_path: Path) -> None:
    result = run_training({**FAST, "epochs": 1, "max_train_images": 200, "out_dir": str(tmp_path)})
    start = read_log(tmp_path)[0]
    assert start["train_images"] == 200 and start["steps_per_epoch"] == 4
    assert result.epochs_done == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"epochs": 0}, "epochs must be positive"),
        ({"joint": "False"}, "joint must be bool"),
        ({"gradient_block": 0}, "gradient_block must be bool"),
        ({"batch_size": 32.5}, "batch_size must be int"),
        ({"sharing": "top"}, "sharing must be one of"),
        ({"method": "dml"}, "method must be one of"),
        ({"learning_rate": 0.1}, "unknown config key"),
        ({"method": "kd"}, "needs a teacher"),
        ({"method": "fitnet"}, "needs a teacher"),
        ({"method": "fitnet", "teacher": "wrn-10-1", "hint_epochs": 4}, "hint_epochs must be in"),
        ({"method": "fitnet", "teacher": "wrn-10-1", "hint_epochs": 0}, "hint_epochs must be in"),
        ({"method": "rocket"}, "needs a booster"),
        ({"method": "kd", "teacher": "not-a-net"}, "neither an architecture nor a trained"),
        ({"method": "rocket", "booster": "wrn-16-2"}, "cannot share"),
        ({"student": "vgg16"}, "student 'vgg16' is not an architecture"),
        ({"method": "rocket", "booster": "resnet21"}, "booster 'resnet21' is not an architecture"),
        ({"epochs": math.inf}, "epochs must be a finite number"),
        ({"method": "kd", "teacher": "wrn-10-1", "teacher_epochs": math.nan}, "teacher_epochs"),
        ({"momentum": -0.5}, "momentum must be >= 0"),
        ({"momentum": math.nan}, "momentum must be a finite number"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"kd_weight": -1.0}, "kd_weight must be >= 0"),
        ({"hint_weight": math.nan}, "hint_weight must be a finite number"),
        ({"ce_weight": -1.0}, "ce_weight must be >= 0"),
        ({"checkpoint_minutes": -1}, "checkpoint_minutes must be >= 0"),
        ({"checkpoint_minutes": math.nan}, "checkpoint_minutes must be a finite number"),
        ({"lr": math.inf}, "lr must be a finite number"),
    ],
)
def test_bad_configs_get_clear_errors(bad: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        run_training({**FAST, **bad, "out_dir": str(tmp_path)})


def _colour_tree(root: Path, classes: list[str], per_class: int) -> None:
    """Real JPEGs, one flat colour per class plus noise: learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(per_class):
                base = np.full((8, 8, 3), 25 * i, dtype=np.int16)
                noisy = np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"{j:03d}.jpg")


@pytest.mark.parametrize("dataset", ["imagefolder", "cifar10"])
def test_folder_datasets_train_with_augmentation(dataset: str, tmp_path: Path) -> None:
    classes = ["apple", "pear", "plum"] if dataset == "imagefolder" else None
    from export.data import CIFAR10_LABELS

    _colour_tree(tmp_path / "data", classes or list(CIFAR10_LABELS), per_class=12)
    cfg = {
        **FAST,
        "dataset": dataset,
        "data_dir": str(tmp_path / "data"),
        "cache_dir": str(tmp_path / "cache"),
        "student": "resnet8",
        "epochs": 6,
        "batch_size": 16,
        "out_dir": str(tmp_path / "run"),
    }
    result = run_training(cfg)
    _, meta = load_trained(result.artifact_path)
    size = 8 if dataset == "imagefolder" else 32  # CIFAR-10 images are brought to 32x32
    assert meta.dataset == dataset and list(meta.input_spec["shape"]) == [3, size, size]
    assert meta.labels == (classes or list(CIFAR10_LABELS))
    assert "crop+flip" in (meta.recipe or "")
    assert result.test_top1 >= 0.5  # chance is 1/3 and 1/10; flat colours are easy


def test_bf16_training_learns_and_the_card_says_so(tmp_path: Path) -> None:
    """precision bf16 autocasts the forward pass (the CPU's AMX/AVX512-BF16 units) and still
    learns: the exported fp32 weights reach the same bar as fp32 training."""
    result = run_training({**FAST, "precision": "bf16", "out_dir": str(tmp_path)})
    assert result.test_top1 >= 0.90, f"{result.test_top1:.3f}"
    _, meta = load_trained(result.artifact_path)
    assert "bf16 training" in (meta.recipe or "")
    assert all(p.dtype == torch.float32 for p in load_trained(result.artifact_path)[0].parameters())
    with pytest.raises(ConfigError, match="precision must be one of"):
        run_training({**FAST, "precision": "int4", "out_dir": str(tmp_path / "bad")})


def test_precision_auto_is_bf16_only_where_the_device_has_it_natively(tmp_path: Path) -> None:
    """auto never picks emulated bf16 (about 10x slower than fp32 on an AVX2-only CPU); the card's
    recipe names the precision the run actually used."""
    cpu = torch.device("cpu")
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bf16(cpu) is native
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept
    result = run_training({**FAST, "precision": "auto", "out_dir": str(tmp_path)})
    _, meta = load_trained(result.artifact_path)
    assert f"{resolve_precision('auto', cpu)} training" in (meta.recipe or "")


def test_a_run_resumes_under_another_precision(tmp_path: Path) -> None:
    """Precision is how the arithmetic runs, like the device: a checkpoint written by bf16 training
    resumes under fp32 (a zoo moved to a CPU without bf16) instead of starting again."""
    first = run_training({**FAST, "precision": "bf16", "out_dir": str(tmp_path), "stop_after": 1})
    assert not first.completed and first.epochs_done == 1
    second = run_training({**FAST, "precision": "fp32", "out_dir": str(tmp_path), "resume": True})
    assert second.completed and second.epochs_run == FAST["epochs"] - 1


def test_a_run_begun_on_an_accelerator_and_finished_here_names_both_devices(
    tmp_path: Path,
) -> None:
    """A zoo trained with --train-only on a GPU machine and resumed on the CPU: the card's
    training device says which epochs ran where (the log's start record stands for the GPU's)."""
    first = run_training({**FAST, "out_dir": str(tmp_path), "stop_after": 1})
    assert not first.completed
    lines = (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines()
    start = json.loads(lines[0])
    assert start["event"] == "start"
    here = start["device"]
    start["device"] = "cuda (NVIDIA H200)"
    lines[0] = json.dumps(start)
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = run_training({**FAST, "out_dir": str(tmp_path), "resume": True})
    _, meta = load_trained(second.artifact_path)
    n = FAST["epochs"]
    assert meta.device == f"cuda (NVIDIA H200): epoch 1; {machine_of(here)}: epochs 2-{n}"


def test_a_new_option_left_unset_does_not_block_resuming() -> None:
    from export.training.config import fingerprint_changes

    written = {"epochs": 40, "lr": 0.1}  # a checkpoint from before 'hint_epochs' existed
    assert fingerprint_changes({"epochs": 40, "lr": 0.1, "hint_epochs": None}, written) == []
    assert fingerprint_changes({"epochs": 40, "lr": 0.1, "hint_epochs": 6}, written) == [
        "hint_epochs"
    ]
    assert fingerprint_changes({"epochs": 30, "lr": 0.1}, written) == ["epochs"]


def test_epoch_end_times_take_each_epochs_latest_end_and_skip_a_torn_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    log.write("start", epoch=0)
    log.write("epoch", epoch=1)
    log.write("epoch", epoch=2)
    log.write("start", epoch=0)  # a fresh run into the same folder trains epoch 1 again
    log.write("epoch", epoch=1)
    with (tmp_path / "log.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"event": "epoch", "time": 17')  # killed mid-write
    times = [r["time"] for r in read_log_lines(tmp_path) if r.get("event") == "epoch"]
    assert epoch_end_times(tmp_path) == {1: times[2], 2: times[1]}
    assert epoch_end_times(tmp_path / "none") == {}


def read_log_lines(out_dir: Path) -> list[dict[str, Any]]:
    """The log's whole lines (read_log itself expects none torn)."""
    lines = (out_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


class _Clock:
    """A stand-in for the pause-aware clock: ``now`` is the wall clock, ``paused_s`` the time
    SIGTSTP held the process."""

    def __init__(self) -> None:
        self.now, self.paused_s = 1_000.0, 0.0

    def __call__(self) -> float:
        return self.now - self.paused_s


def test_the_progress_bar_leaves_a_pause_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zoo paused for a test suite showed 3 img/s and hours left for the rest of its epoch."""
    clock = _Clock()
    monkeypatch.setattr(pause, "clock", clock)
    monkeypatch.setattr("tqdm.std.time", lambda: clock.now)  # tqdm's own clock
    bar = Progress(100, "epoch 1/1", enabled=True)
    clock.now += 10
    bar.update(1.0, 0.5, 1_000)
    clock.now += 3_600
    clock.paused_s += 3_600  # an hour stopped by zoo-pause
    clock.now += 10
    bar.update(1.0, 0.5, 1_000)
    assert bar.images_per_s == pytest.approx(100.0)
    assert bar.bar.format_dict["elapsed"] == pytest.approx(20.0)
    bar.close()


def test_interval_blocks_counts_only_for_rocket_with_interval_sharing() -> None:
    from export.training.config import fingerprint_changes

    # A teacher's checkpoint written when interval_blocks defaulted to 1 resumes under 0 ...
    teacher = {"method": "baseline", "epochs": 40, "sharing": "bottom"}
    assert (
        fingerprint_changes({**teacher, "interval_blocks": 0}, {**teacher, "interval_blocks": 1})
        == []
    )
    bottom = {"method": "rocket", "sharing": "bottom"}
    assert (
        fingerprint_changes({**bottom, "interval_blocks": 0}, {**bottom, "interval_blocks": 1})
        == []
    )
    # ... but a Rocket that shared one block per stage is not the one that shares them all.
    for method in ("rocket", "rocket-kd"):
        interval = {"method": method, "sharing": "interval"}
        assert fingerprint_changes(
            {**interval, "interval_blocks": 0}, {**interval, "interval_blocks": 1}
        ) == ["interval_blocks"]
