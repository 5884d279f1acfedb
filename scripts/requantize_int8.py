"""Re-make every int8 variant of a repository from its fp32 parent with today's quantiser.

Each int8 model is quantised again from the fp32 model it was derived from (same calibration
images, export/quantize.py), measured and published as its next version with the same card
fields; ``--drop-old`` then removes the superseded versions' files and records, so the repository
holds only the new one. Run it with nothing else busy on the cores (it measures latency).

    .venv/bin/python scripts/requantize_int8.py models --drop-old
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from export.data import load_dataset
from export.evaluate import machine_description
from export.quantize import make_variant
from export.repository import ArtifactInfo, EvalData, ProfileSettings, publish
from service.contract.model_card import (
    MANIFEST_FILENAME,
    model_dirs,
    model_file,
    read_manifest,
    write_manifest,
)


def requantize(repo: Path, data_dir: str | None, drop_old: bool) -> int:
    """Re-make each int8 variant of ``repo``; returns how many."""
    cards = {c.name: c for c in (read_manifest(d) for d in model_dirs(repo))}
    done = 0
    for card in sorted(cards.values(), key=lambda c: c.name):
        if card.precision != "int8" or card.derived_from not in cards:
            continue
        parent = cards[card.derived_from]
        source = data_dir or card.training.config.get("data_dir")
        splits = load_dataset(card.metrics.dataset, source)
        teacher = None
        if card.training.teacher in cards:
            t = cards[card.training.teacher]
            teacher = (model_file(repo / t.name, t.version), t.input)
        info = ArtifactInfo(
            name=card.name,
            labels=card.labels,
            input=card.input,
            training=card.training,
            precision="int8",
            derived_from=card.derived_from,
            output_name=card.output.name,
            teacher=teacher,
        )
        settings = ProfileSettings(
            provider=card.profile.provider,
            threads=card.profile.threads,
            machine=machine_description(),
            min_runs=50,
            min_seconds=0.5,
        )
        with tempfile.TemporaryDirectory(prefix="requant-") as tmp:
            variant = Path(tmp) / "model-int8.onnx"
            make_variant(
                "int8",
                model_file(repo / parent.name, parent.version),
                variant,
                splits.train_images,
                card.input,
            )
            data = EvalData(splits.name, splits.test_images, splits.test_labels)
            new = publish(repo, info, variant, data, settings)
        if drop_old:
            for old in card.version_records():
                shutil.rmtree(repo / card.name / str(old.version), ignore_errors=True)
            new = new.model_copy(update={"other_versions": ()})
            write_manifest(repo / card.name / str(new.version), new)
            write_manifest(repo / card.name, new)
        print(
            f"{card.name}: v{card.version} {card.metrics.top1:.2%} -> v{new.version} "
            f"{new.metrics.top1:.2%} (fp32 parent {parent.metrics.top1:.2%})",
            flush=True,
        )
        done += 1
    assert all((d / MANIFEST_FILENAME).is_file() for d in model_dirs(repo))
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("--data-dir", help="data set folder (default: from each card)")
    parser.add_argument("--drop-old", action="store_true", help="keep only the new versions")
    args = parser.parse_args(argv)
    count = requantize(args.repo, args.data_dir, args.drop_old)
    print(f"{count} int8 model(s) re-made in {args.repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
