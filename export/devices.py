"""Training devices as runs and cards name them: the machine, and which epochs ran where."""

from __future__ import annotations

import re
from typing import Any

_THREADS = re.compile(r", \d+ threads?\)")


def machine_of(device: str) -> str:
    """A device text without its thread count: 'cpu (AMD EPYC, 2 cores, 1 thread)' and
    'cpu (AMD EPYC, 2 cores, 2 threads)' are one machine, 'cpu (AMD EPYC, 2 cores)' (a zoo lane
    raised to every core once it is alone still trains on the same machine)."""
    return _THREADS.sub(")", device)


def devices_text(records: list[dict[str, Any]], epochs: int, current: str) -> str:
    """What a run trained on, from its log's start and resume records: ``current`` when every
    process ran on one machine (:func:`machine_of`), else each machine with its epochs, e.g.
    ``cuda (NVIDIA H200): epochs 1-4; cpu (AMD EPYC, 2 cores): epochs 5-30`` (a run trained on an
    accelerator machine and finished on the CPU). A record that trained no epoch before the next
    one counts for nothing."""
    starts: list[tuple[int, str]] = []
    for record in records:
        if record.get("event") in ("start", "resume") and record.get("device"):
            try:
                first = int(record.get("epoch", 0))
            except (TypeError, ValueError):
                continue
            if record.get("event") == "start":
                starts = [s for s in starts if s[0] < first]  # a fresh run trains those again
            starts.append((first, str(record["device"])))
    spans: list[tuple[int, int, str]] = []  # (first epoch, last epoch, machine), 1-based
    for i, (first, device) in enumerate(starts):
        device = machine_of(device)
        last = starts[i + 1][0] if i + 1 < len(starts) else epochs
        if last <= first:
            continue
        if spans and spans[-1][2] == device and spans[-1][1] == first:
            spans[-1] = (spans[-1][0], last, device)
        else:
            spans.append((first + 1, last, device))
    if len({device for _, _, device in spans}) <= 1:
        return current
    return "; ".join(
        f"{device}: epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}"
        for a, b, device in spans
    )


def device_spans(text: str) -> list[tuple[str, str]]:
    """A card's training device as (machine, epochs) pairs: ``[("cpu (...)", "")]`` for a run on
    one machine, ``[("cuda (NVIDIA H200)", "1-4"), ("cpu (...)", "5-30")]`` for one that moved
    (:func:`devices_text`)."""
    if not text:
        return []
    pairs = []
    for part in text.split("; "):
        device, sep, epochs = part.rpartition(": epoch")
        if sep and epochs.lstrip("s ").replace("-", "").isdigit():
            pairs.append((machine_of(device), epochs.lstrip("s ")))
        else:
            pairs.append((machine_of(part), ""))
    return pairs
