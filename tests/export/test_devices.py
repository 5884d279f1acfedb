"""Device texts: which machine trained a run, and which of its epochs ran where."""

from __future__ import annotations

from export.devices import device_spans, devices_text, machine_of


def test_devices_text_merges_a_device_and_drops_what_a_fresh_start_retrains() -> None:
    gpu, cpu = "cuda (NVIDIA H200)", "cpu (x, 2 cores)"
    one = [{"event": "start", "epoch": 0, "device": cpu}, {"event": "resume", "epoch": 3,
           "device": cpu}]  # fmt: skip
    assert devices_text(one, 30, cpu) == cpu
    mixed = [
        {"event": "start", "epoch": 0, "device": gpu},
        {"event": "resume", "epoch": 4, "device": gpu},
        {"event": "resume", "epoch": 4, "device": cpu},  # stopped before training an epoch
        {"event": "resume", "epoch": 4, "device": cpu},
        {"event": "resume", "epoch": 9, "device": gpu},
    ]
    expected = f"{gpu}: epochs 1-4; {cpu}: epochs 5-9; {gpu}: epochs 10-30"
    assert devices_text(mixed, 30, gpu) == expected
    fresh = [{"event": "start", "epoch": 0, "device": gpu}, {"event": "start", "epoch": 0,
             "device": cpu}]  # fmt: skip
    assert devices_text(fresh, 30, cpu) == cpu  # the GPU's epochs were trained again
    # a lane raised from one thread to two is still the same machine
    one, two = "cpu (EPYC, 2 cores, 1 thread)", "cpu (EPYC, 2 cores, 2 threads)"
    lanes = [{"event": "start", "epoch": 0, "device": one},
             {"event": "resume", "epoch": 5, "device": two}]  # fmt: skip
    assert devices_text(lanes, 30, "cpu (EPYC, 2 cores, 2 threads)") == (
        "cpu (EPYC, 2 cores, 2 threads)"
    )


def test_a_machine_is_its_device_text_without_the_thread_count() -> None:
    assert machine_of("cpu (AMD EPYC, 2 cores, 1 thread)") == "cpu (AMD EPYC, 2 cores)"
    assert machine_of("cpu (AMD EPYC, 2 cores, 16 threads)") == "cpu (AMD EPYC, 2 cores)"
    assert machine_of("cuda (NVIDIA H200) x2") == "cuda (NVIDIA H200) x2"


def test_device_spans_read_back_what_devices_text_wrote() -> None:
    gpu, cpu = "cuda (NVIDIA H200)", "cpu (EPYC, 2 cores)"
    assert device_spans(f"{gpu}: epoch 1; {cpu}: epochs 2-30") == [(gpu, "1"), (cpu, "2-30")]
    assert device_spans("cpu (EPYC, 2 cores, 1 threads)") == [(cpu, "")]
    assert device_spans("") == []
