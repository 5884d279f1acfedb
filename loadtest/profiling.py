"""Sample the service with py-spy while the bench loads it, and say where its CPU time goes.

Each sample (one thread's stack) is put in the bucket of the innermost frame that names one:
ONNX Runtime, Pillow or simplejpeg decoding, numpy preprocessing, multipart parsing, JSON,
top-k, the batcher, other service code, FastAPI/Starlette, uvicorn/httptools, the asyncio loop.
A thread-pool thread sitting in its work queue is counted apart as waiting, not as work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (bucket, substrings of a frame "function (file:line)"), tried in order on each frame from the
# innermost outwards; the first frame that matches decides the bucket.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ONNX Runtime (inference)", ("onnxruntime/", "inference/session.py")),
    ("Pillow decode", ("PIL/",)),
    ("JPEG decode (simplejpeg)", ("service/inputs/fastjpeg.py", "simplejpeg")),
    ("preprocess (numpy)", ("service/contract/preprocess.py",)),
    ("multipart parsing", ("python_multipart/", "_parse_multipart")),
    ("JSON encode/decode", ("json/",)),
    ("softmax + top-k", ("service/inference/predictions.py",)),
    ("Prometheus metrics", ("prometheus_client/",)),
    ("batcher", ("service/inference/batcher.py",)),
    ("other service code", ("service/",)),
    ("FastAPI/Starlette", ("fastapi/", "starlette/")),
    ("uvicorn/httptools", ("uvicorn/", "httptools")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
)
WAITING = "a thread waiting for work"
# Leaves of a thread that waits rather than works: a thread pool's idle worker, an inference
# thread waiting in the batcher for requests (a Condition or an Event). py-spy's --nonblocking
# mode (the service is not stopped at each sample) cannot tell such threads from busy ones.
WAITING_LEAVES = (
    "_worker (concurrent/futures/thread.py",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)


class ProfilerMissing(RuntimeError):
    """py-spy is not installed next to this Python."""


def py_spy() -> str:
    """Path of the py-spy executable of this environment."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise ProfilerMissing("py-spy is not installed (pip install py-spy, in the dev extras)")
    return found


def start_recording(
    pid: int, seconds: float, out: Path, rate: int = 200
) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` and its subprocesses, collapsed stacks into ``out``."""
    cmd = [
        py_spy(), "record", "--pid", str(pid), "--subprocesses", "--duration",
        str(max(1, round(seconds))), "--rate", str(rate), "--format", "raw", "--output", str(out),
        "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def bucket_of(stack: list[str]) -> str:
    """The bucket of one stack, frames listed outermost first."""
    leaf = stack[-1] if stack else ""
    if leaf.startswith(WAITING_LEAVES):
        return WAITING
    for frame in reversed(stack):
        for name, needles in BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize(raw: Path) -> tuple[int, Counter[str]]:
    """Total samples and samples per bucket of a py-spy ``--format raw`` file."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        # With --subprocesses the first frame names the process; drop "process ..." frames.
        frames = [f for f in frames if not f.startswith("process ")]
        counts[bucket_of(frames)] += int(n)
        total += int(n)
    return total, counts


def report(raw: Path) -> list[str]:
    """Lines 'share  bucket' of working samples, best first, then the waiting share."""
    total, counts = summarize(raw)
    waiting = counts.pop(WAITING, 0)
    working = max(total - waiting, 1)
    lines = [f"{100.0 * n / working:5.1f}%  {name}" for name, n in counts.most_common()]
    lines.append(f"({total} samples; {waiting} more of threads waiting for work, not counted)")
    return lines
