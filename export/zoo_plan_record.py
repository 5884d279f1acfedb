"""The plan `zoo-plan` saves in a zoo's work folder, for `zoo-status` to price the rest."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PLAN_FILENAME = "plan.json"


@dataclass(frozen=True)
class PlannedCost:
    """One entry's planned cost: its epochs and their one-core CPU-hours."""

    epochs: float
    cpu_hours: float
    conditional: bool = False  # a second seed, trained only if due
    images: int = 0  # training images an epoch (0: not recorded)

    @property
    def per_epoch(self) -> float:
        """One-core CPU-hours of one epoch (the teacher's logits spread over the epochs)."""
        return self.cpu_hours / self.epochs if self.epochs else 0.0

    @property
    def img_per_s(self) -> float | None:
        """The img/s the plan expects of one core for this entry, all it runs per image
        included (None when the plan did not record its images)."""
        return self.images / (self.per_epoch * 3600) if self.images and self.per_epoch else None


@dataclass(frozen=True)
class PlanRecord:
    """Every entry's planned cost, when and where the rates behind it were measured."""

    measured_at: float  # Unix time
    machine: str
    cores: int
    entries: dict[str, PlannedCost]


def hm(hours: float) -> str:
    """Hours as h:mm (a digits zoo costs minutes, the CIFAR-10 one tens of hours)."""
    minutes = round(hours * 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def write_plan_record(work: Path, record: PlanRecord) -> Path:
    """Save ``record`` as ``work/plan.json`` (atomically: a reader sees the old or the new one)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / PLAN_FILENAME
    tmp = path.with_name(f"{PLAN_FILENAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_plan_record(work: Path) -> PlanRecord | None:
    """The plan saved in ``work``; None when there is none or it cannot be read (a foreign or
    older file is as good as none: `zoo-plan` writes it again)."""
    path = work / PLAN_FILENAME
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        return PlanRecord(
            measured_at=float(blob["measured_at"]),
            machine=str(blob["machine"]),
            cores=int(blob["cores"]),
            entries={
                str(name): PlannedCost(
                    epochs=float(cost["epochs"]),
                    cpu_hours=float(cost["cpu_hours"]),
                    conditional=bool(cost.get("conditional", False)),
                    images=int(cost.get("images", 0)),
                )
                for name, cost in blob["entries"].items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
