"""The router's choice among candidates: budget with headroom, floor, fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.errors import Unprocessable
from service.repository.routing import Candidate, Objective, choose


def cand(name: str, accuracy: float, p99: float) -> Candidate:
    return Candidate(SimpleNamespace(name=name), accuracy, p99, live=True)


TEACHER, STUDENT = cand("teacher", 0.93, 9.0), cand("student", 0.90, 2.0)


def test_the_headroom_moves_traffic_before_the_budget_breaks() -> None:
    budget = Objective(latency_budget_ms=10.0)
    assert choose([TEACHER, STUDENT], budget)[0] is TEACHER  # 9 ms <= 10 ms
    chosen, met = choose([TEACHER, STUDENT], budget, headroom=0.8)  # 9 ms > 8 ms
    assert chosen is STUDENT and met


def test_nothing_within_the_headroom_names_it_in_the_422() -> None:
    with pytest.raises(Unprocessable) as err:
        choose([TEACHER, STUDENT], Objective(latency_budget_ms=2.2), headroom=0.8)
    assert "predicted p99 of 1.76 ms or less (routing_headroom 0.8)" in err.value.message
    assert "the fastest is student (predicted p99 2.00 ms" in err.value.message
    chosen, met = choose(
        [TEACHER, STUDENT], Objective(latency_budget_ms=2.2, fallback="cheapest"), headroom=0.8
    )
    assert chosen is STUDENT and not met


def test_the_floor_is_not_affected_by_the_headroom() -> None:
    objective = Objective(min_accuracy=0.92)
    assert choose([TEACHER, STUDENT], objective, headroom=0.5)[0] is TEACHER
