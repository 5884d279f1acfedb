"""How many worker processes serve a repository: chosen from its cards before any starts.

One process has one event loop, and the loop's work per request (HTTP, decoding, the answer:
~0.3-0.4 ms of Python) does not shrink with the model. For a light model that work costs more
than the inference, so one process tops out near one core of loop however many cores there
are; one process per core, each with its own loop and a share of the cores for its batches,
uses the machine (on 2 cores, the smallest student served 1.4x the requests per second). A
heavy model is the other way round: a lone request should get every core, which one process
gives it (the thread layout of ``service.inference.layout``). So ``workers=auto`` runs one
process per core (at most ``MAX_AUTO_PROCESSES``) when every model's lone call is light by its
card, and one process otherwise, or on a GPU (one set of device buffers). A number wins.
(Explicit model control keeps the processes in step: ``service.repository.control``.)
"""

from __future__ import annotations

from collections.abc import Sequence

from service.contract.model_card import ModelCard
from service.inference.session import CUDA, choose_provider
from service.settings import AUTO, Settings, usable_cores

LIGHT_MS = 1.0  # a model whose batch-1 call (p50 on its card) takes at most this is light
MAX_AUTO_PROCESSES = 8  # beyond this, run more replicas (deploy/k8s) rather than processes


def lone_call_ms(card: ModelCard) -> float | None:
    """The batch-1 p50 the card measured, if it has one."""
    row = card.profile.row(1)
    return row.p50_ms if row else None


def choose_processes(
    settings: Settings, cards: Sequence[ModelCard], cores: int | None = None
) -> tuple[int, str]:
    """The worker processes to run, and why."""
    if settings.workers != AUTO:
        return int(settings.workers), "set by workers"
    cores = usable_cores() if cores is None else cores
    if cores <= 1:
        return 1, "one core"
    if choose_provider(settings.provider) == CUDA:
        return 1, "CUDA: one process, one set of device buffers"
    if not cards:
        return 1, "no model cards"
    for card in sorted(cards, key=lambda c: c.name):
        ms = lone_call_ms(card)
        if ms is None or ms > LIGHT_MS:
            took = "has no batch-1 timing" if ms is None else f"takes {ms:.2f} ms a lone call"
            return 1, (
                f"{card.name} {took} on its card (light: at most {LIGHT_MS:g} ms): one process "
                "gives a lone request every core"
            )
    n = min(cores, MAX_AUTO_PROCESSES)
    return n, (
        f"every model takes at most {LIGHT_MS:g} ms a lone call on its card: {n} processes "
        f"(one per core, at most {MAX_AUTO_PROCESSES}), each with its own event loop"
    )
