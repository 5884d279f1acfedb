"""Run logs: a JSON-lines file per run and a progress bar with loss, accuracy and img/s."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from export.training import pause

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
    Time the process spends paused (export/training/pause.py) is left out of its elapsed time,
    rate, time left and img/s, as it is of the epoch's record.
    """

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = tqdm(
            total=total, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
            leave=False, mininterval=0.1 if sys.stderr.isatty() else 60.0,
        )  # fmt: skip
        self.images = 0  # seen since this bar started (not those of a resumed epoch's first part)
        # The training clock at the start, and the process's paused time when the bar last
        # looked; a hidden bar only counts images, and reads no clock.
        self.start = self.paused_s = 0.0
        if not self.bar.disable:
            self.start, self.paused_s = pause.clock(), pause.clock.paused_s

    def update(self, loss: float, acc: float, batch_images: int) -> None:
        """Advance one step of ``batch_images`` images; loss and accuracy are running values."""
        self.images += batch_images
        if self.bar.disable:
            return
        self._leave_out_pauses()
        self.bar.set_postfix(
            loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{self.images_per_s:.0f}", refresh=False
        )
        self.bar.update(1)

    def _leave_out_pauses(self) -> None:
        """Move the bar's clock marks forward by the time paused since it last looked (the way
        tqdm's own ``unpause`` does, to the second)."""
        paused = pause.clock.paused_s - self.paused_s
        if paused > 0:
            self.paused_s += paused
            self.bar.start_t += paused
            self.bar.last_print_t += paused

    @property
    def images_per_s(self) -> float:
        """Images this bar has seen over the training seconds since it started."""
        return self.images / max(pause.clock() - self.start, 1e-9)

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()
