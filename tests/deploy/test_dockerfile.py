"""The Dockerfile: hadolint clean, slim non-root runtime, GPU target, and a lean build context."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.stack import DOCKERFILE, ROOT


def tool(name: str) -> str:
    """Path of a console script installed next to this interpreter, or on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[dev]')"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named build stage, in file order."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = found.setdefault(name, [])
        if current is not None:
            current.append((word, rest))
    return found


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore rules (last match wins, ! re-includes) exclude ``path``."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_runtime_is_the_default_slim_non_root_target() -> None:
    found = stages()
    assert list(found)[-1] == "runtime", "the last stage is what a plain `docker build .` gives"
    runtime = found["runtime"]
    assert "-slim" in runtime[0][1]
    words = dict(runtime)
    assert words["USER"].split(":")[0] not in ("0", "root")
    assert "/readyz" in words["HEALTHCHECK"]
    assert words["EXPOSE"].split() == ["8000", "8001"]  # REST, and gRPC at Triton's port
    assert "ROCKETSERVE_GRPC_PORT=8001" in " ".join(rest for word, rest in runtime if word == "ENV")
    assert ("COPY", "models ./models") in runtime
    assert "ROCKETSERVE_MODEL_REPOSITORY=/app/models" in " ".join(
        rest for word, rest in runtime if word == "ENV"
    )
    assert words["CMD"] == '["python", "-m", "service"]'


def test_no_torch_and_never_two_onnxruntimes() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    runs = [rest for word, rest in instructions(text) if word == "RUN"]
    installs = [cmd for cmd in runs if "pip install" in cmd]
    # Only the base dependencies: no extras (`.[export]` would bring torch), no torch by name.
    assert installs and not any(re.search(r"pip install[^&]*(\.\[|torch)", c) for c in installs)
    assert any("find_spec('torch') is not None" in cmd for cmd in installs), "torch guard"
    gpu_run = " ".join(rest for word, rest in stages()["gpu"] if word == "RUN")
    assert re.search(r"pip install .*\. .*pip uninstall -y onnxruntime .*onnxruntime-gpu", gpu_run)
    gpu = dict(stages()["gpu"])
    assert "nvidia/cuda" in text and "/readyz" in gpu["HEALTHCHECK"]
    assert gpu["USER"].split(":")[0] not in ("0", "root")


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    sources = []
    for word, rest in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if word == "COPY" and not rest.startswith("--from"):
            sources.extend(rest.split()[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing in the repository"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_heavy_things_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "out/digits-zoo/teacher.pt",
        "runs/x/ckpt.pth",
        "tests/conftest.py",
        "export/train.py",
        "service/http/__pycache__/app.cpython-311.pyc",
        ".mypy_cache/x.json",
    ):
        assert dockerignored(path, patterns), path
    kept = ("service/http/app.py", "models/m/1/model.onnx", "loadtest/locustfile.py", "README.md")
    for path in kept:
        assert not dockerignored(path, patterns), path
