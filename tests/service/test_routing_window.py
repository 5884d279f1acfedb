"""The router's live window: p99 over recent requests only, so a shut-out model comes back."""

from __future__ import annotations

import numpy as np
import pytest

from service.repository.routing import LatencyWindow, robust_p99


def test_no_live_figure_before_enough_requests() -> None:
    window = LatencyWindow(size=100)
    for i in range(LatencyWindow.MIN_SAMPLES - 1):
        window.add(0.002, now=100.0 + i * 0.01)
    assert window.p99_ms(now=101.0) is None
    window.add(0.002, now=101.0)
    assert window.p99_ms(now=101.0) == 2.0


def test_congested_figures_age_out_and_fresh_ones_replace_them() -> None:
    window = LatencyWindow(size=1024)
    for i in range(200):  # a congested spell: 30 ms answers
        window.add(0.030, now=i * 0.01)
    assert window.p99_ms(now=2.0) == 30.0
    # The router stops choosing the model; its old answers leave the window after MAX_AGE_S.
    later = 2.0 + LatencyWindow.MAX_AGE_S + 0.1
    assert window.p99_ms(now=later) is None  # back to the load-time prediction
    assert len(window.samples(now=later)) == 0
    for i in range(LatencyWindow.MIN_SAMPLES):  # traffic again, now fast
        window.add(0.003, now=later + i * 0.01)
    assert window.p99_ms(now=later + 1.0) == 3.0


def test_the_window_is_bounded_by_size_and_age() -> None:
    window = LatencyWindow(size=50)
    for i in range(120):
        window.add(0.001 * (i + 1), now=i / 20)  # 6 s of requests
    assert len(window.samples(now=6.0)) == 50  # the size bound
    assert round(window.samples(now=6.0).min(), 6) == 0.071  # the oldest kept is request 71
    assert len(window.samples(now=6.0 + LatencyWindow.MAX_AGE_S - 2.0)) == 40  # the age bound


def test_one_slow_request_does_not_shut_a_model_out_but_two_do() -> None:
    window = LatencyWindow(size=1024)
    for i in range(LatencyWindow.MIN_SAMPLES - 1):
        window.add(0.002, now=100.0 + i * 0.01)
    window.add(0.050, now=100.5)  # one collection pause among fast answers
    assert window.p99_ms(now=100.5) == 2.0
    for i in range(LatencyWindow.REFRESH):
        window.add(0.002, now=100.6 + i * 0.001)
    window.add(0.050, now=100.7)  # a second slow answer: the model may really be slow now
    assert window.p99_ms(now=100.7) == 50.0


def test_robust_p99_is_the_percentile_from_a_hundred_and_one_samples_on() -> None:
    rng = np.random.default_rng(0)
    for n in (101, 500, 1024):
        x = rng.exponential(1.0, n)
        assert robust_p99(x) == float(np.percentile(x, 99))
    x = np.arange(1.0, 51.0)  # 50 samples: never above the second largest
    assert robust_p99(x) == 49.0
    assert robust_p99(np.array([3.0])) == 3.0 and robust_p99(np.array([])) == 0.0


def test_latencies_are_brought_to_one_input_before_their_p99() -> None:
    window = LatencyWindow(size=100)
    for i in range(30):  # 30 requests of 9 inputs: 10 ms, of which 8 x 1 ms for the 8 more
        window.add(0.010, now=i * 0.01, inputs=9)
    assert window.p99_ms(now=0.3) == pytest.approx(10.0)
    assert window.p99_ms(now=0.3, per_image_ms=1.0) == pytest.approx(2.0)
    assert window.p99_ms(now=0.3, per_image_ms=5.0) == 0.0  # never below nothing


def test_the_count_of_larger_requests_follows_them_out_of_the_window() -> None:
    """Only a window holding requests of several inputs is brought to one input (single-input
    traffic pays nothing for it); the count of those follows them out by size and by age."""
    window = LatencyWindow(size=30)
    for i in range(10):
        window.add(0.010, now=i * 0.001, inputs=9)  # 10 ms, 8 ms of it for the 8 more inputs
    for i in range(25):
        window.add(0.002, now=0.1 + i * 0.001)  # 5 of the large ones pushed out by size
    assert window.p99_ms(now=0.2) == pytest.approx(10.0)
    assert window.p99_ms(now=0.2, per_image_ms=1.0) == pytest.approx(2.0)
    for i in range(30):
        window.add(0.002, now=0.3 + i * 0.001)  # the rest pushed out
    assert window._multi == 0
    late = LatencyWindow(size=100)
    for i in range(30):
        late.add(0.010, now=i * 0.001, inputs=5)
    late.p99_ms(now=LatencyWindow.MAX_AGE_S + 1.0)  # every one aged out
    assert late._multi == 0
