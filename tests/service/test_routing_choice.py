"""The router's choice among candidates: budget with headroom, floor, fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.errors import Unprocessable
from service.http.v2_infer import routed_inputs
from service.inputs.body import PredictRequest
from service.inputs.v2_request import InferInput, InferRequest
from service.repository.routing import (
    OVERHEAD_MS,
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
    window = SimpleNamespace(p99_ms=lambda now, per_image_ms=0.0: None)
    return SimpleNamespace(
        name=name,
        version=1,
        card=card,
        window=window,
        batch1_ms=1.0,
        per_image_ms=1.0,
        batching=True,
        layout=None,
        batcher=SimpleNamespace(queue_depth=0, queued_requests=0),
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


def _timed(name: str, top1: float, batch1_ms: float, per_image_ms: float) -> SimpleNamespace:
    """A served version without live figures, with its load-time batch-1 and per-image times."""
    served = _served(name, "cifar10", top1)
    served.batch1_ms, served.per_image_ms = batch1_ms, per_image_ms
    return served


def test_each_input_of_the_request_adds_the_models_time_per_image() -> None:
    """Before traffic: batch-1 time, overhead, then one time per image for each input queued
    ahead and each of the request's own inputs beyond the first."""
    teacher = _timed("teacher", 0.93, batch1_ms=3.0, per_image_ms=1.5)
    student = _timed("student", 0.90, batch1_ms=1.0, per_image_ms=0.1)
    one = {c.served.name: c.predicted_p99_ms for c in candidates([teacher, student], None, 0.0)}
    assert one == {"teacher": 3.0 + OVERHEAD_MS, "student": 1.0 + OVERHEAD_MS}
    many = candidates([teacher, student], None, 0.0, inputs=33)
    assert [c.predicted_p99_ms for c in many] == pytest.approx(
        [3.0 + OVERHEAD_MS + 32 * 1.5, 1.0 + OVERHEAD_MS + 32 * 0.1]
    )
    teacher.batcher.queue_depth = 4  # four inputs queued ahead of this request
    [queued, _] = candidates([teacher, student], None, 0.0, inputs=2)
    assert queued.predicted_p99_ms == pytest.approx(3.0 + OVERHEAD_MS + 5 * 1.5)
    # The same budget serves one image from the teacher and 33 from the student.
    budget = Objective(latency_budget_ms=10.0)
    assert choose(candidates([teacher, student], None, 0.0), budget)[0].served is teacher
    assert choose(many, budget)[0].served is student


def test_a_window_of_mixed_sizes_predicts_each_size_for_itself() -> None:
    """Six of ten recent requests carried one image (2 ms), four carried 32 (2 ms and 0.5 ms
    per more image: 17.5 ms). The slowest are the largest, so the raw p99 is theirs; brought to
    one input, the window predicts 2 ms for one image and 17.5 ms for 32."""
    served = _timed("student", 0.9, batch1_ms=1.0, per_image_ms=0.5)
    served.window = LatencyWindow(size=128)
    for i in range(100):
        big = i % 5 < 2
        served.window.add(0.0175 if big else 0.002, now=i * 0.001, inputs=32 if big else 1)
    assert served.window.p99_ms(0.2) == pytest.approx(17.5)  # the raw figure: the 32s'
    [one] = candidates([served], None, 0.2, inputs=1)
    [many] = candidates([served], None, 0.2, inputs=32)
    assert one.source == many.source == "live"
    assert one.predicted_p99_ms == pytest.approx(2.0)
    assert many.predicted_p99_ms == pytest.approx(17.5)


def test_the_router_counts_a_requests_inputs_before_decoding_them() -> None:
    """/predict: its images, or the first axis of an [N,C,H,W] tensor; v2: the first axis of
    its BYTES images or [N,C,H,W] tensor. A [C,H,W] tensor is one input."""
    item = [[[0.0] * 4] * 4] * 3
    assert PredictRequest(images=[b"a", b"b", b"c"]).input_count() == 3
    assert PredictRequest(tensor=item).input_count() == 1
    assert PredictRequest(tensor=[item] * 5).input_count() == 5
    assert PredictRequest(tensor=[]).input_count() == 1  # refused when decoded
    assert PredictRequest(tensor=[[[[]]]]).input_count() == 1
    assert PredictRequest(tensor=[[[[0.0]]]] * 2).input_count() == 2

    def v2(datatype: str, shape: tuple[int, ...]) -> InferRequest:
        return InferRequest(inputs=[InferInput("input", datatype, shape)])

    assert routed_inputs(v2("BYTES", (6,))) == 6
    assert routed_inputs(v2("BYTES", (6, 1))) == 6
    assert routed_inputs(v2("FP32", (7, 3, 32, 32))) == 7
    assert routed_inputs(v2("FP32", (3, 32, 32))) == 1
    assert routed_inputs(v2("FP32", (0, 3, 32, 32))) == 1
    assert routed_inputs(InferRequest()) == 1


def test_a_sudden_queue_raises_the_live_figure_at_once() -> None:
    """The live p99 lags a burst by up to a refresh; the inference the queued inputs need (per
    image, over the version's inference workers) is a floor it is never taken below."""
    teacher = _timed("teacher", 0.93, batch1_ms=3.0, per_image_ms=1.0)
    teacher.window = LatencyWindow(size=64)
    for i in range(40):
        teacher.window.add(0.006, now=i * 0.01)  # calm: 6 ms
    [calm] = candidates([teacher], None, 0.5)
    assert calm.source == "live" and calm.predicted_p99_ms == pytest.approx(6.0)
    teacher.batcher.queue_depth = 40  # a burst: 40 inputs queued, the window not refreshed yet
    teacher.batcher.queued_requests = 10
    [burst] = candidates([teacher], None, 0.5)
    assert burst.source == "queued work"
    assert burst.predicted_p99_ms == pytest.approx(3.0 + 40 * 1.0)
    teacher.layout = SimpleNamespace(inference_workers=2)  # two workers drain it side by side
    [halved] = candidates([teacher], None, 0.5)
    assert halved.predicted_p99_ms == pytest.approx(3.0 + 20 * 1.0)
    # batching off: each queued request runs alone, a batch-1 call and its other inputs; the
    # 40 inputs are 10 requests of 4
    teacher.batching, teacher.batcher.queued_requests = False, 10
    [alone] = candidates([teacher], None, 0.5)
    assert alone.predicted_p99_ms == pytest.approx(3.0 + (10 * 3.0 + 30 * 1.0) / 2)
    teacher.batching = True
    student = _timed("student", 0.90, batch1_ms=1.0, per_image_ms=0.1)
    found = candidates([teacher, student], None, 0.5)
    assert choose(found, Objective(latency_budget_ms=10.0))[0].served is student
    note = routing_note(found[0], True, Objective(latency_budget_ms=10.0), 2)
    assert note["prediction"] == "queued work"
