"""Trained artifacts: exact round trip, strict loading, clear errors for foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.checkpoint import ArtifactError, TrainedMeta, load_trained, save_trained
from export.data import load_dataset
from export.models import build_model


def _meta(arch: str = "wrn-10-1") -> TrainedMeta:
    data = load_dataset("digits")
    return TrainedMeta(
        arch=arch,
        model_kwargs={"in_channels": 1, "num_classes": 10, "image_size": 8},
        dataset="digits",
        labels=list(data.labels),
        input_spec=data.input_spec.model_dump(mode="json"),
        method="baseline",
        epochs=1.5,
        seed=3,
        config={"lr": 0.1},
        wall_time_s=1.25,
        device="cpu (test)",
        recipe="sgd",
        test_top1=0.5,
    )


def test_round_trip_is_exact_and_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("wrn-10-1", in_channels=1, num_classes=10, image_size=8)
    net.train()
    net(torch.randn(8, 1, 8, 8))  # non-trivial BN statistics
    net.eval()
    path = save_trained(tmp_path / "a" / "trained.pt", net, _meta())
    loaded, meta = load_trained(path)
    assert not loaded.training
    assert meta == _meta()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(x), net(x))
    assert [p.name for p in tmp_path.joinpath("a").iterdir()] == ["trained.pt"]  # no temp left


def test_weights_that_do_not_fit_the_arch_are_refused(tmp_path: Path) -> None:
    net = build_model("wrn-16-1", in_channels=1, num_classes=10, image_size=8)
    path = save_trained(tmp_path / "x.pt", net, _meta("wrn-10-1"))
    with pytest.raises(ArtifactError, match="do not fit wrn-10-1"):
        load_trained(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        load_trained(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="not a readable torch file"):
        load_trained(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a rocketserve trained artifact"):
        load_trained(tmp_path / "other.pt")


def test_a_file_of_python_objects_is_refused_in_one_line_naming_it(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """Not torch's page of advice to load it with weights_only=False: that would run its code."""
    import argparse
    import pickle

    torch.save({"args": argparse.Namespace()}, tmp_path / "objects.pt")
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"args": argparse.Namespace()}, protocol=4))
    for name in ("objects.pt", "pickled.pt"):
        with pytest.raises(ArtifactError) as exc:
            load_trained(tmp_path / name)
        message = str(exc.value)
        assert message.startswith(f"{tmp_path / name}: not a readable torch file")
        assert "\n" not in message and "weights_only" not in message
    assert not recwarn.list


def test_meta_with_unknown_fields_is_refused() -> None:
    data = _meta().to_dict() | {"surprise": 1}
    with pytest.raises(ArtifactError, match="surprise"):
        TrainedMeta.from_dict(data)
