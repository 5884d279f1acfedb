"""Bucketing py-spy samples into where the service's CPU time goes."""

from __future__ import annotations

from pathlib import Path

from loadtest.profiling import WAITING, bucket_of, report, summarize

LOOP = (
    "process 1:python -m service;_run_module_as_main (<frozen runpy>:198);run (uvicorn/main.py:1)"
)
ROUTE = f"{LOOP};APIRoute.handle (fastapi/routing.py:9);predict (service/http/routes.py:160)"
THREAD = "process 1:python -m service;Thread._bootstrap (threading.py:1002)"
COLLAPSED = "\n".join(
    [
        f"{ROUTE};parse_body (service/inputs/body.py:3);write (python_multipart/multipart.py:7) 30",
        f"{ROUTE};open_image (service/inputs/images.py:5);load (PIL/ImageFile.py:2) 20",
        f"{ROUTE};preprocess_image (service/contract/preprocess.py:70) 10",
        f"{ROUTE} 15",
        f"{LOOP};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:5) 15",
        f"{THREAD};_infer (service/inference/batcher.py:240);"
        "__call__ (service/inference/session.py:85) 10",
        f"{THREAD};_worker (concurrent/futures/thread.py:81) 50",
    ]
)


def test_innermost_named_frame_decides() -> None:
    assert bucket_of(["predict (service/http/routes.py:1)", "load (PIL/ImageFile.py:2)"]) == (
        "Pillow decode"
    )
    assert bucket_of(
        ["_infer (service/inference/batcher.py:1)", "run (service/inference/session.py:2)"]
    ) == ("ONNX Runtime (inference)")
    assert bucket_of(["x (threading.py:1)", "_worker (concurrent/futures/thread.py:81)"]) == WAITING
    # an inference thread waiting in the batcher for requests waits; one in ONNX Runtime works
    collect = "DynamicBatcher._collect (service/inference/batcher.py:381)"
    assert bucket_of([collect, "Condition.wait (threading.py:327)"]) == WAITING
    run = "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)"
    assert bucket_of(["DynamicBatcher._run (service/inference/batcher.py:428)", run]) == (
        "ONNX Runtime (inference)"
    )
    assert bucket_of(["mystery (nowhere.py:1)"]) == "other"


def test_summary_counts_work_apart_from_waiting(tmp_path: Path) -> None:
    raw = tmp_path / "profile.collapsed.txt"
    raw.write_text(COLLAPSED + "\n")
    total, counts = summarize(raw)
    assert total == 150
    assert counts["multipart parsing"] == 30 and counts["Pillow decode"] == 20
    assert counts["other service code"] == 15 and counts["uvicorn/httptools"] == 15
    assert counts["ONNX Runtime (inference)"] == 10 and counts[WAITING] == 50
    lines = report(raw)
    assert lines[0] == " 30.0%  multipart parsing"  # 30 of the 100 working samples
    assert lines[-1].startswith("(150 samples; 50 more of threads waiting for work")
