"""REPORT.md sorted by latency and pareto.png with the frontier marked."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from export.report import pareto_front, render_report, write_report
from service.model_card import ModelCard, ProfileRow, read_manifest


def _variant(card: ModelCard, name: str, top1: float, p50: float) -> ModelCard:
    rows = tuple(
        ProfileRow(batch_size=bs, p50_ms=p50 * bs, p99_ms=p50 * bs * 1.5, images_per_s=1000 / p50)
        for bs in (1, 8, 32, 128)
    )
    return card.model_copy(
        update={
            "name": name,
            "metrics": card.metrics.model_copy(update={"top1": top1}),
            "profile": card.profile.model_copy(update={"rows": rows}),
        }
    )


def _cards(digits_repo: Path) -> list[ModelCard]:
    base = read_manifest(digits_repo / "digits-logreg")
    return [
        _variant(base, "fast-weak", 0.90, 0.1),
        _variant(base, "slow-strong", 0.99, 2.0),
        _variant(base, "dominated", 0.92, 1.0),  # slower than fast-weak, weaker than mid
        _variant(base, "mid", 0.95, 0.5),
        _variant(base, "tie-slower", 0.95, 0.7),  # same accuracy as mid, slower
    ]


def test_pareto_front_keeps_only_undominated_models(digits_repo: Path) -> None:
    assert pareto_front(_cards(digits_repo)) == {"fast-weak", "mid", "slow-strong"}


def test_report_is_sorted_by_latency_and_marks_the_front(digits_repo: Path) -> None:
    text = render_report(_cards(digits_repo), "Test zoo")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    for column in ("top-1 %", "p50 ms b1", "p99 ms b1", "img/s b32", "params", "MACs", "size"):
        assert column in header
    names = [r.split("|")[1].strip() for r in body]
    assert names == ["fast-weak", "mid", "tie-slower", "dominated", "slow-strong"]
    starred = {r.split("|")[1].strip() for r in body if r.rstrip(" |").endswith("★")}
    assert starred == {"fast-weak", "mid", "slow-strong"}
    assert "| 95.00 |" in body[1] and "| 0.500 | 0.750 |" in body[1]
    assert "Machine: " in text and "pareto.png" in text


def test_write_report_produces_markdown_and_a_png(digits_repo: Path, tmp_path: Path) -> None:
    report, png = write_report(tmp_path, _cards(digits_repo), "Test zoo")
    assert report == tmp_path / "REPORT.md" and "slow-strong" in report.read_text()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 800
