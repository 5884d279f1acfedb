"""Live accuracy without labels: a sample of answered requests re-run through a reference model.

A fraction (``agreement_sample_rate``) of the requests a model answered is re-run, after the
answer has gone, through its reference: the teacher named on its card when that teacher is
served, else ``agreement_reference``, else the most accurate model of its family. The two top-1
classes are compared and the difference of their top-1 probabilities observed. A sample is taken
only when the reference's queue has room to spare (under a quarter full), and it runs as its own
task, so it never delays or fails a client's request; a sample that finds no room is dropped and
counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any

import numpy as np

from service.errors import ServiceError
from service.inference.predictions import softmax
from service.observability.metrics import ServiceMetrics

log = logging.getLogger(__name__)

WINDOW = 200  # samples in the recent agreement ratio


class AgreementSampler:
    """Chooses the samples, runs them through the reference, and records the agreement."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        rate: float,
        reference: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.metrics, self.rate, self.reference = metrics, rate, reference
        self._random = random.Random(seed)
        self._recent: dict[tuple[str, str], deque[bool]] = {}  # by (model, reference)
        self._tasks: set[asyncio.Task[None]] = set()

    def reference_for(self, served: Any, newest: dict[str, Any]) -> Any | None:
        """The model version that judges ``served``, or None (it is its own best judge)."""
        card = served.card

        def comparable(m: Any) -> bool:  # takes the very same batch, answers in the same labels
            return bool(m.card.input == card.input and m.card.labels == card.labels)

        for name in (card.training.teacher, self.reference):
            if name and name in newest and name != served.name and comparable(newest[name]):
                return newest[name]
        family = [
            m
            for m in newest.values()
            if m.card.training.dataset == card.training.dataset and comparable(m)
        ]
        best = max(family, key=lambda m: (m.card.metrics.top1, m.name), default=None)
        return best if best is not None and best.name != served.name else None

    def offer(
        self, served: Any, batch: np.ndarray, outputs: np.ndarray, newest: dict[str, Any]
    ) -> None:
        """An answered request: maybe take it as a sample (never blocks, never raises)."""
        if self.rate <= 0 or self._random.random() >= self.rate:
            return
        reference = self.reference_for(served, newest)
        if reference is None:
            return
        labels = (served.name, reference.name)
        batcher = reference.batcher
        if not batcher.running or batcher.queue_depth + len(batch) > batcher.capacity // 4:
            self.metrics.agreement_dropped.labels(*labels).inc()
            return
        task = asyncio.ensure_future(self._compare(served.name, reference, batch, outputs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self, name: str, reference: Any, batch: np.ndarray, outputs: np.ndarray
    ) -> None:
        labels = (name, reference.name)
        try:
            result = await reference.batcher.submit(batch)
        except ServiceError:
            self.metrics.agreement_dropped.labels(*labels).inc()
            return
        served_p = softmax(np.asarray(outputs, dtype=np.float32))
        reference_p = softmax(np.asarray(result.outputs, dtype=np.float32))
        served_top, reference_top = served_p.argmax(axis=1), reference_p.argmax(axis=1)
        recent = self._recent.setdefault(labels, deque(maxlen=WINDOW))
        for s_top, r_top, s_p, r_p in zip(
            served_top, reference_top, served_p.max(axis=1), reference_p.max(axis=1), strict=True
        ):
            agree = bool(s_top == r_top)
            recent.append(agree)
            self.metrics.agreement.labels(*labels, "true" if agree else "false").inc()
            self.metrics.agreement_top1_diff.labels(*labels).observe(abs(float(s_p - r_p)))
        self.metrics.agreement_ratio.labels(*labels).set(sum(recent) / len(recent))

    async def close(self) -> None:
        """Wait for the samples in flight (they finish with the reference's batcher)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
