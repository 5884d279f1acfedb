"""The router's choice among candidates: budget with headroom, floor, fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.errors import Unprocessable
from service.repository.routing import (
    Candidate,
    LatencyWindow,
    Objective,
    candidates,
    choose,
    routing_note,
)


def cand(name: str, accuracy: float, p99: float) -> Candidate:
    return Candidate(SimpleNamespace(name=name, version=1), accuracy, p99, live=True)


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


def _served(name: str, dataset: str, top1: float = 0.9) -> SimpleNamespace:
    """A served version as candidates() reads it: its card, window, load-time figures."""
    card = SimpleNamespace(
        version=1,
        training=SimpleNamespace(dataset=dataset),
        metrics=SimpleNamespace(top1=top1),
    )
    window = SimpleNamespace(p99_ms=lambda now: None)
    return SimpleNamespace(
        name=name,
        version=1,
        card=card,
        window=window,
        batch1_ms=1.0,
        batcher=SimpleNamespace(queue_depth=0),
    )


def test_accuracies_of_different_data_sets_are_not_ranked_together() -> None:
    """A digits model's 97 % says nothing against a CIFAR-10 model's 85 %: the objective must
    name its family, and a family nobody serves is named with those served."""
    models = [_served("digits", "digits", 0.97), _served("cifar", "cifar10", 0.85)]
    with pytest.raises(Unprocessable, match=r"several data sets \(cifar10, digits\)"):
        candidates(models, None, 0.0)
    [only] = candidates(models, "cifar10", 0.0)
    assert only.served.name == "cifar"
    with pytest.raises(Unprocessable, match="families served: cifar10, digits"):
        candidates(models, "CIFAR10", 0.0)


def test_a_version_no_card_measured_meets_no_floor_and_says_so() -> None:
    """A newest version vouched for by another version's card has no top-1 of its own: it is
    not taken for 0 % (nor for its card's), it meets no floor and the answer says unmeasured."""
    unmeasured = _served("new", "digits")
    unmeasured.version = 2  # its card is version 1's
    [c] = candidates([unmeasured], None, 0.0)
    assert c.accuracy is None
    measured = cand("old", 0.50, 5.0)
    assert choose([c, measured], Objective(min_accuracy=0.4))[0] is measured
    with pytest.raises(Unprocessable, match="top-1 unmeasured"):
        choose([c], Objective(min_accuracy=0.4))


def test_after_a_fallback_the_note_says_which_part_of_the_objective_is_met() -> None:
    objective = Objective(latency_budget_ms=1.0, min_accuracy=0.92, fallback="cheapest")
    chosen, met = choose([TEACHER, STUDENT], objective)
    note = routing_note(chosen, met, objective, 2)
    assert note["fallback"] == "cheapest"
    assert note["meets"] == {"latency_budget_ms": False, "min_accuracy": False}
    objective = Objective(latency_budget_ms=1.0, min_accuracy=0.92, fallback="most_accurate")
    note = routing_note(*choose([TEACHER, STUDENT], objective), objective, 2)
    assert note["chosen"].startswith("teacher") and note["meets"] == {
        "latency_budget_ms": False,
        "min_accuracy": True,
    }


def test_a_window_smaller_than_the_minimum_still_gives_a_live_figure() -> None:
    window = LatencyWindow(size=16)
    for i in range(16):
        window.add(0.010, float(i) * 0.01)
    assert window.p99_ms(0.2) == pytest.approx(10.0)
