"""``export bench``: each architecture's MACs as its served card counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.__main__ import main
from export.bench_train import graph_macs
from export.data.splits import make_input_spec
from export.models import build_model
from service.contract.model_card import ModelCard

MODELS = Path(__file__).resolve().parents[2] / "models"


def _card(name: str) -> ModelCard:
    return ModelCard.model_validate_json((MODELS / name / "manifest.json").read_text())


def test_bench_counts_the_macs_the_served_card_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_json = tmp_path / "b.json"
    argv = ["bench", "--archs", "wrn-16-1", "shallow-2-128", "--seconds", "0", "--batch-size",
            "4", "--threads", "1", "--json", str(out_json)]  # fmt: skip
    assert main(argv) == 0
    rows = {r["arch"]: r for r in json.loads(out_json.read_text())["rows"]}
    for arch, served in (("wrn-16-1", "cifar10-baseline-wrn-16-1"),
                         ("shallow-2-128", "cifar10-mimic-shallow-2-128")):  # fmt: skip
        # params differ by design: PyTorch's count here, the graph as run (BN folded) on a card
        assert rows[arch]["macs"] == _card(served).macs
    out = capsys.readouterr().out
    assert f"{rows['wrn-16-1']['macs'] / 1e6:.2f}M" in out


def test_graph_macs_leaves_the_network_as_it_was() -> None:
    model = build_model("resnet8", in_channels=1, num_classes=10, image_size=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = make_input_spec(8, 8, 1, (0.5,), (0.25,))
    macs = graph_macs(model, spec)
    assert macs > 0 and model.training
    assert all((before[k] == v).all() for k, v in model.state_dict().items())
    # twice the pixels, about twice the convolution work
    assert graph_macs(model, make_input_spec(16, 8, 1, (0.5,), (0.25,))) > 1.8 * macs
