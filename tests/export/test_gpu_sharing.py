"""Tests for export/gpu_sharing.py: finding the CUDA MPS daemon, and when lanes get the note."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from export.gpu_sharing import gpu_sharing_note, mps_control_pipe, mps_running
from export.zoo import Zoo, ZooOptions
from export.zoo_config import config_path, load_zoo_config


def test_mps_is_running_only_where_its_control_pipe_is(tmp_path: Path) -> None:
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}
    assert mps_control_pipe(env) == tmp_path / "control"
    assert not mps_running(env)  # no daemon: no pipe
    (tmp_path / "control").write_text("")  # a plain file is not the daemon's pipe
    assert not mps_running(env)
    (tmp_path / "control").unlink()
    os.mkfifo(tmp_path / "control")
    assert mps_running(env)
    assert mps_control_pipe({}) == Path("/tmp/nvidia-mps/control")  # the daemon's default


def test_the_note_is_for_more_lanes_than_gpus_without_mps() -> None:
    note = gpu_sharing_note(10, 1, mps=False)
    assert note is not None
    assert "up to 10 lanes share each of 1 GPU(s)" in note and "nvidia-cuda-mps-control -d" in note
    assert "up to 3 lanes share each of 2 GPU(s)" in str(gpu_sharing_note(5, 2, mps=False))
    assert gpu_sharing_note(10, 1, mps=True) is None  # side by side already
    assert gpu_sharing_note(2, 0, mps=False) is None  # CPU lanes: nothing to share
    assert gpu_sharing_note(2, 2, mps=False) is None  # a GPU each


@pytest.fixture
def digits_zoo(tmp_path: Path) -> tuple[Zoo, list[dict[str, object]]]:
    config = load_zoo_config(config_path("digits"))
    zoo = Zoo(config, tmp_path / "repo", ZooOptions(lanes=2), log=lambda _: None)
    return zoo, [config["teacher"], *config["students"]]


def test_lanes_count_the_gpus_they_would_train_on(
    digits_zoo: tuple[Zoo, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo, entries = digits_zoo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert zoo._training_gpus(entries) == 2  # device auto: the GPUs
    pinned = [{**e, "device": "cpu"} for e in entries]
    assert zoo._training_gpus(pinned) == 0  # every entry pinned to the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert zoo._training_gpus(entries) == 0
