"""run_training on digits: every method learns, the rocket switches work, resuming is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from export.checkpoint import load_trained
from export.data import load_dataset
from export.training import ConfigError, TrainResult, run_training
from export.training.logs import read_log
from export.training.loop import ResumeError
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
    events = [r["event"] for r in read_log(tmp_path)]
    assert events == ["start", "epoch", "epoch", "epoch", "epoch", "end"]
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
        ({"method": "rocket"}, "needs a booster"),
        ({"method": "kd", "teacher": "not-a-net"}, "neither an architecture nor a trained"),
        ({"method": "rocket", "booster": "wrn-16-2"}, "cannot share"),
        ({"student": "vgg16"}, "student 'vgg16' is not an architecture"),
        ({"method": "rocket", "booster": "resnet21"}, "booster 'resnet21' is not an architecture"),
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
