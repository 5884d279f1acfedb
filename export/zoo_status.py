"""Where a long zoo run stands: each entry's epochs, test top-1 and time left, from its logs."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from export.convergence import span_union_s
from export.lanes import paused_entries, running_entries
from export.repository import load_cards
from export.training.result import ADOPTED_EVENT, HINT_STAGE_DIR, RESULT_FILENAME
from export.zoo_config import model_name, prerequisites, second_seed_reason
from export.zoo_plan_record import PlanRecord, hm, read_plan_record

RECENT_EPOCHS = 3  # the time left is priced at the mean rate of the last few epochs


@dataclass(frozen=True)
class EntryStatus:
    """One zoo entry's state, read from its work folder and the lanes' logs."""

    name: str
    state: str  # done, adopted (rebuilt from a served model, export/adopt.py), training (in a
    # lane now), paused (in a lane, stopped by zoo-pause), started (its process ended before the
    # end), not started, skipped
    epochs_done: int = 0
    epochs: float | None = None
    test_top1: float | None = None
    img_per_s: float | None = None
    hours_left: float | None = None
    waits_for: tuple[str, ...] = ()
    lane: int | None = None  # the lane training it now
    due: str = ""  # a second seed not started: whether it will train, and the gap that says so
    # Epochs it trained on another kind of device (an accelerator machine lent for a while, zoo
    # --train-only): done, but left out of its rate and of the zoo's pace here.
    epochs_elsewhere: int = 0


def _records(log: Path) -> list[dict[str, Any]]:
    records = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: the others still count
    return records


def device_kind(device: object) -> str | None:
    """'cpu' or 'cuda' from a log's device text such as 'cuda (NVIDIA H200)'; None if absent."""
    if not device:
        return None
    return str(device).split(" ", 1)[0].split(":", 1)[0]


def _tag_epochs(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """Each epoch record with the kind of device of the process that trained it (the start or
    resume record before it)."""
    kind, tagged = None, []
    for r in records:
        if r.get("event") in ("start", "resume"):
            kind = device_kind(r.get("device"))
        elif r.get("event") == "epoch":
            tagged.append((r, kind))
    return tagged


def here_kind(work: Path) -> str | None:
    """The kind of device the zoo trains on here: the saved plan's machine, else the device of
    the latest start or resume record of any entry's log; None when neither says."""
    plan = read_plan_record(work)
    if plan is not None:
        return device_kind(plan.machine)
    latest: tuple[float, str | None] = (-1.0, None)
    for log in work.rglob("log.jsonl"):
        for r in _records(log):
            if r.get("event") in ("start", "resume") and r.get("device"):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    latest = max(latest, (float(r["time"]), device_kind(r["device"])))
    return latest[1]


def entry_status(
    entry: dict[str, Any],
    config: dict[str, Any],
    work: Path,
    done: set[str],
    skipped: set[str],
    lanes: dict[str, int] | None = None,
    paused: set[str] | None = None,
    here: str | None = None,
) -> EntryStatus:
    """The state of ``entry`` of zoo ``config`` in its work folder ``work``; ``done`` names the
    entries that finished, ``skipped`` the conditional ones the zoo decided not to train,
    ``lanes`` the entries lanes train now (export/lanes.py ``running_entries``), ``paused``
    those of them stopped now; ``here`` the kind of device that trains here (:func:`here_kind`):
    the rate comes from epochs trained on it alone."""
    name = str(entry["name"])
    lane = (lanes or {}).get(name)
    in_lane = "paused" if name in (paused or set()) else "training"
    folder = work / name
    if name in skipped:
        return EntryStatus(name, "skipped")
    log = folder / "log.jsonl"
    records = _records(log) if log.is_file() else []
    starts = [r for r in records if r.get("event") in ("start", "resume")]
    tagged = _tag_epochs(records)
    adopted = [r for r in records if r.get("event") == ADOPTED_EVENT]
    if adopted and name in done and (not starts or starts[-1]["time"] < adopted[-1]["time"]):
        # Rebuilt from a served model (export/adopt.py), not trained in this folder.
        epochs = adopted[-1].get("epochs")
        return EntryStatus(
            name,
            "adopted",
            int(epochs or 0),
            float(epochs) if epochs is not None else None,
            adopted[-1].get("test_top1"),
        )
    # FitNets trains stage 1 (hints) in a sub-run first: its epochs are the run's first ones, and
    # the run's own log, begun when stage 2 starts, counts stage 2's epochs from 1.
    hint_log = folder / HINT_STAGE_DIR / "log.jsonl"
    hint_records = _records(hint_log) if hint_log.is_file() else []
    hint_tagged = _tag_epochs(hint_records)
    hint_done = int(hint_tagged[-1][0].get("epoch", 0)) if hint_tagged else 0
    if starts:
        total = (starts[-1].get("config") or {}).get("epochs")
        images = starts[-1].get("train_images")
    elif hint_records:  # in stage 1: priced at stage 1's pace
        tagged = hint_tagged
        total = entry.get("epochs", (config.get("defaults") or {}).get("epochs"))
        images = next((r.get("train_images") for r in hint_records if r.get("train_images")), None)
    else:
        if lane is not None:
            return EntryStatus(name, in_lane, lane=lane)
        waiting = tuple(n for n in prerequisites(entry, config) if n not in done)
        return EntryStatus(name, "not started", waits_for=waiting)
    last = tagged[-1][0] if tagged else {}
    finished = name in done

    def is_here(kind: str | None) -> bool:
        return here is None or kind in (here, None)

    mine = [r for r, kind in tagged if is_here(kind)]
    elsewhere = len({r.get("epoch") for r, kind in tagged if not is_here(kind)})
    if starts:  # in stage 2: stage 1's epochs count too
        elsewhere += len({r.get("epoch") for r, kind in hint_tagged if not is_here(kind)})
    rates = [float(r["img_per_s"]) for r in mine[-RECENT_EPOCHS:] if r.get("img_per_s")]
    rate = statistics.fmean(rates) if rates else None
    epochs_done = int(last.get("epoch", 0)) + (hint_done if starts else 0)
    left = None
    if not finished and rate and images and total is not None:
        left = max(0.0, float(total) - epochs_done) * float(images) / rate / 3600
    return EntryStatus(
        name,
        "done" if finished else in_lane if lane is not None else "started",
        epochs_done,
        float(total) if total is not None else None,
        last.get("test_top1"),
        rate,
        left,
        lane=lane,
        epochs_elsewhere=elsewhere,
    )


def zoo_status(config: dict[str, Any], work: Path) -> list[EntryStatus]:
    """Every entry of a zoo config, in order, as its work folder ``work`` shows it."""
    entries = [config["teacher"], *config["students"]]
    done = {str(e["name"]) for e in entries if _completed(work / str(e["name"]))}
    skipped: set[str] = set()
    for lane_log in sorted(work.glob("lane-*.log")):
        text = lane_log.read_text(encoding="utf-8", errors="replace")
        skipped |= {
            str(e["name"])
            for e in entries
            if f"[{model_name(config['dataset'], e['name'])}] skipped:" in text
        }
    lanes, paused = running_entries(work), paused_entries(work)
    here = here_kind(work)
    statuses = [entry_status(e, config, work, done, skipped, lanes, paused, here) for e in entries]
    seeds = [e for e in entries if e.get("second_seed_of")]
    if seeds:
        cards = [c for c in load_cards(work.parent) if c.derived_from is None]
        by_name = {str(e["name"]): e for e in seeds}
        for i, status in enumerate(statuses):
            entry = by_name.get(status.name)
            if entry is not None and status.state == "not started" and not status.waits_for:
                due, why = second_seed_reason(
                    entry, cards, lambda n: model_name(config["dataset"], n)
                )
                statuses[i] = replace(status, due=("due: " if due else "not due: ") + why)
    return statuses


def _completed(folder: Path) -> bool:
    result = folder / RESULT_FILENAME
    if not result.is_file():
        return False
    try:
        return bool(json.loads(result.read_text(encoding="utf-8"))["result"]["completed"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def elapsed_training_hours(work: Path, here: str | None = None) -> float:
    """Hours during which any entry trained so far: the union of every epoch its logs record
    (each the span of its training time that ends when it was logged), hint stages and
    pretrained boosters included; entries side by side in lanes count once. With ``here``, only
    the epochs trained on that kind of device."""
    spans = []
    for log in sorted(work.rglob("log.jsonl")):
        for r, kind in _tag_epochs(_records(log)):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if here is None or kind in (here, None):
                    end = float(r["time"])
                    spans.append((end - float(r["epoch_time_s"]), end))
    return span_union_s(spans) / 3600


@dataclass(frozen=True)
class ZooTimeLeft:
    """What is left of the whole zoo, priced by the saved plan and the pace so far."""

    cpu_left: float  # one-core CPU-hours of the entries that will train
    cpu_if_due: float  # of the second seeds not started yet, each trained only if due
    cpu_done: float  # the plan's CPU-hours of the epochs done so far
    pace: float | None  # wall hours per planned CPU-hour so far; None before any epoch
    unpriced: tuple[str, ...] = ()  # entries the plan does not name (the config changed since)
    cores_now: float | None = None  # how many of the plan's one-thread cores the entries
    # training now deliver, each its recent img/s over the img/s the plan expects of one core;
    # None when none trains or one has no rate yet


def zoo_time_left(
    statuses: list[EntryStatus], plan: PlanRecord, elapsed_hours: float
) -> ZooTimeLeft:
    """Price the rest of the zoo: each entry's planned CPU-hours per epoch times its epochs not
    done yet (a skipped second seed costs nothing, nor does one that its comparison, readable
    now, says is not due; one whose comparison cannot be read yet is counted apart), and
    the pace so far: the wall time the finished epochs took (``elapsed_hours``, entries side by
    side counted once) over their planned CPU-hours. The pace carries how well this machine's
    cores served the zoo so far (thread scaling, lanes, other work); the rest is assumed to
    go as well. Beside it, the rate now: the cores' worth of the plan's one-thread img/s that the
    entries training now deliver at their recent img/s."""
    left = if_due = done = 0.0
    unpriced = []
    for s in statuses:
        cost = plan.entries.get(s.name)
        if s.state in ("skipped", "adopted") or s.due.startswith("not due"):
            continue  # costs nothing, and its epochs took no time here: the pace leaves it out
        if cost is None:
            unpriced.append(s.name)
            continue
        epochs = s.epochs if s.epochs is not None else cost.epochs
        total = cost.per_epoch * epochs
        fraction = 1.0 if s.state == "done" else min(1.0, s.epochs_done / epochs) if epochs else 0
        elsewhere = min(1.0, s.epochs_elsewhere / epochs) if epochs else 0.0
        done += total * max(0.0, fraction - elsewhere)  # the pace: epochs trained here alone
        if cost.conditional and s.state == "not started" and not s.due:
            if_due += total * (1 - fraction)  # not readable yet: its comparison is not done
        else:
            left += total * (1 - fraction)
    pace = elapsed_hours / done if done > 0 and elapsed_hours > 0 else None
    return ZooTimeLeft(left, if_due, done, pace, tuple(unpriced), _cores_now(statuses, plan))


def _cores_now(statuses: list[EntryStatus], plan: PlanRecord) -> float | None:
    cores = 0.0
    training = [s for s in statuses if s.state == "training"]
    for s in training:
        cost = plan.entries.get(s.name)
        expected = cost.img_per_s if cost is not None else None
        if not (expected and s.img_per_s):
            return None  # a lane without a rate yet (a hint stage, a booster trained first)
        cores += s.img_per_s / expected
    return cores or None


def _whole_zoo(statuses: list[EntryStatus], work: Path, elapsed: float) -> list[str]:
    plan = read_plan_record(work)
    if plan is None:
        return [
            "whole zoo: no saved plan prices what is left (`zoo-plan --out` saves one in the "
            "work folder; run it with the zoo paused)"
        ]
    est = zoo_time_left(statuses, plan, elapsed)
    if not (est.cpu_left or est.cpu_if_due or est.unpriced):
        return []  # nothing left: the counts above say it all
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(plan.measured_at))
    seeds = f" (+{hm(est.cpu_if_due)} of second seeds, each only if due)" if est.cpu_if_due else ""
    lines = [
        f"whole zoo, by the plan of {when} ({plan.machine}, {plan.cores} cores): "
        f"{hm(est.cpu_left)} of one-core CPU left{seeds}"
    ]

    def left(pace: float) -> str:
        due = f", {hm((est.cpu_left + est.cpu_if_due) * pace)} if every second seed is due"
        return f"about {hm(est.cpu_left * pace)} of training left{due if est.cpu_if_due else ''}"

    if est.cores_now is not None:
        lines.append(
            f"at the rate of the entries training now ({est.cores_now:.2f} cores' worth of the "
            f"plan's one-core img/s): {left(1 / est.cores_now)}"
        )
    if est.pace is not None:
        lines.append(
            f"at the pace so far (the plan's {hm(est.cpu_done)} of CPU done took "
            f"{hm(elapsed)} of wall time): {left(est.pace)}"
        )
    if est.cores_now is None and est.pace is None:
        lines.append(
            f"no epoch done yet to measure the pace: at least {hm(est.cpu_left / plan.cores)} "
            f"of training left (the CPU time over {plan.cores} cores)"
        )
    if est.unpriced:
        lines.append(
            "not in the plan, so not counted (the config changed since; run zoo-plan again): "
            + ", ".join(est.unpriced)
        )
    return lines


def format_status(statuses: list[EntryStatus], work: Path) -> str:
    """The status as a table, with the training time left of the entries under way."""
    lines = [
        f"zoo work folder: {work}",
        f"{'entry':<42}{'state (lane)':>14}{'epoch':>9}{'top-1 %':>9}{'img/s':>8}{'left':>7}"
        "  waits for",
    ]
    for s in statuses:
        epoch = f"{s.epochs_done}/{s.epochs:g}" if s.epochs is not None else "-"
        top1 = f"{s.test_top1 * 100:.2f}" if s.test_top1 is not None else "-"
        rate = f"{s.img_per_s:,.0f}" if s.img_per_s else "-"
        left = hm(s.hours_left) if s.hours_left is not None else "-"
        waits = ", ".join(s.waits_for) or s.due
        state = f"{s.state} ({s.lane})" if s.lane is not None else s.state
        lines.append(f"{s.name:<42}{state:>14}{epoch:>9}{top1:>9}{rate:>8}{left:>7}  {waits}")
    counts = {state: sum(s.state == state for s in statuses) for state in
              ("done", "adopted", "training", "paused", "started", "not started",
               "skipped")}  # fmt: skip
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items() if n))
    here = here_kind(work)
    elapsed = elapsed_training_hours(work, here)
    moved = sum(s.epochs_elsewhere for s in statuses)
    if moved:
        lines.append(
            f"epochs trained on another kind of device than here ({here}): {moved}, done but left "
            "out of the img/s, the time left and the pace"
        )
    if elapsed:
        lines.append(
            f"elapsed training time so far: {hm(elapsed)} (the union of the epochs the entries' "
            "logs record: entries side by side count once; the epoch under way is not in it)"
        )
    under_way = [s.hours_left for s in statuses if s.hours_left is not None]
    if under_way:
        lines.append(
            f"time left of the entries under way, at their recent img/s: {hm(max(under_way))} "
            "for the longest"
        )
    return "\n".join([*lines, *_whole_zoo(statuses, work, elapsed)])
