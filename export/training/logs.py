"""Run logs: a JSON-lines file per run and a progress bar with loss, accuracy and img/s."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

LOG_FILENAME = "log.jsonl"


class RunLog:
    """Append-only JSON-lines log (one object per line, each with an event and a timestamp)."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.path = out_dir / LOG_FILENAME
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        """Append one record."""
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's log."""
    path = out_dir / LOG_FILENAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def epoch_end_times(out_dir: Path) -> dict[int, float]:
    """Epoch number -> when the run's log recorded that epoch's end; where a fresh run trained an
    epoch again, its latest end. A torn line (a process killed mid-write) is skipped."""
    path = out_dir / LOG_FILENAME
    if not path.is_file():
        return {}
    times: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            if record.get("event") == "epoch":
                times[int(record["epoch"])] = float(record["time"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return times


class Progress:
    """A tqdm bar over one epoch's steps showing running loss, accuracy and img/s.

    Redirected to a file (a long training run's log), it writes once a minute, not every step.
    """

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = tqdm(
            total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
            leave=False, mininterval=0.1 if sys.stderr.isatty() else 60.0,
        )  # fmt: skip
        self.start = time.perf_counter()
        self.images = 0  # seen since this bar started (not those of a resumed epoch's first part)

    def update(self, loss: float, acc: float, batch_images: int) -> None:
        """Advance one step of ``batch_images`` images; loss and accuracy are running values."""
        self.images += batch_images
        self.bar.set_postfix(
            loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{self.images_per_s:.0f}", refresh=False
        )
        self.bar.update(1)

    @property
    def images_per_s(self) -> float:
        """Images this bar has seen over the seconds since it started."""
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()
