"""What a training run produced, and its result file: a finished run is returned again on resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.training.config import fingerprint_changes
from export.training.logs import epoch_end_times

RESULT_FILENAME = "result.json"
# The log record of a finished run rebuilt from a served model instead of trained (export/adopt.py).
ADOPTED_EVENT = "adopted"
HINT_STAGE_DIR = "fitnet-hints"  # the folder of fitnet's stage-1 sub-run, inside its run's


@dataclass
class TrainResult:
    """What a run produced: the student's (or light net's) trained artifact and its figures."""

    artifact_path: Path
    extra_artifacts: dict[str, Path] = field(default_factory=dict)
    test_top1: float = 0.0
    wall_time_s: float = 0.0
    out_dir: Path = Path(".")
    completed: bool = True
    epochs_done: int = 0  # epoch loops finished (of both stages for fitnet)
    epochs_run: int = 0  # by this call (a finished run returned again ran none)
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's record, in order

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (paths as strings)."""
        return {
            "artifact_path": str(self.artifact_path),
            "extra_artifacts": {k: str(v) for k, v in self.extra_artifacts.items()},
            "test_top1": self.test_top1,
            "wall_time_s": self.wall_time_s,
            "out_dir": str(self.out_dir),
            "completed": self.completed,
            "epochs_done": self.epochs_done,
            "epochs_run": self.epochs_run,
            "history": self.history,
        }


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def read_finished(out_dir: Path, fp: dict[str, Any]) -> TrainResult | None:
    """The result of a run in ``out_dir`` that finished with the same fingerprint, else None."""
    result_file = out_dir / RESULT_FILENAME
    if not result_file.is_file():
        return None
    stored = json.loads(result_file.read_text(encoding="utf-8"))
    same = not fingerprint_changes(jsonable(fp), stored.get("fingerprint") or {})
    if not (same and stored["result"]["completed"]):
        return None
    r = stored["result"]
    return TrainResult(
        Path(r["artifact_path"]),
        {k: Path(v) for k, v in r["extra_artifacts"].items()},
        r["test_top1"],
        r["wall_time_s"],
        out_dir,
        True,
        r["epochs_done"],
        history=list(r.get("history") or []),  # result files written before it: none
    )


def write_result(out_dir: Path, fp: dict[str, Any], result: TrainResult) -> None:
    """Record a finished run's result beside its artifacts, with the config fingerprint."""
    (out_dir / RESULT_FILENAME).write_text(
        json.dumps({"fingerprint": jsonable(fp), "result": result.to_json()}, indent=2) + "\n",
        encoding="utf-8",
    )


def whole_history(
    before: TrainResult, records: list[dict[str, Any]], out_dir: Path, two_stage: bool
) -> list[dict[str, Any]]:
    """The run's epochs in order, each with the time it ended from the run's log (the log spans
    every resume; the checkpoint's records have no clock): a two-stage (FitNets) run's hint stage
    first, marked as such, then the second stage's epochs numbered after it."""
    ended = epoch_end_times(out_dir)
    timed = [{**r, "finished_at": ended.get(int(r["epoch"]))} for r in records]
    if not two_stage:
        return timed
    first = [{**r, "stage": "hint"} for r in before.history]
    return first + [{**r, "epoch": int(r["epoch"]) + before.epochs_done} for r in timed]
