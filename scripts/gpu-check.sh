#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: a venv with onnxruntime-gpu (never beside onnxruntime), the
# tests marked gpu, and a short bench of the teacher served on CUDA against raw ONNX Runtime on
# CUDA; then one summary. Stops at once, with the reason, where there is no usable GPU.
#
#   scripts/gpu-check.sh
#
# Environment (all optional):
#   GPU_VENV       the venv to create or reuse (default: .cache/venv-gpu, git-ignored)
#   PYTHON         the interpreter that creates it (default: python3.11; 3.11 or newer)
#   ORT_GPU_SPEC   what pip installs (default: from the driver's CUDA version, see below)
#   GPU_REINSTALL  1: build the venv again from nothing
#   GPU_TESTS      where the gpu-marked tests are (default: tests/service/test_gpu.py)
#   BENCH_MODEL    default: cifar10-teacher-wrn-40-2;  BENCH_SECONDS: per level, default 3
#
# The first run downloads onnxruntime-gpu and its CUDA/cuDNN wheels (about 3 GB); later runs
# reuse the venv, and the checks themselves take one to two minutes (docs/deployment.md, "GPU").
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

fail() {
    echo "gpu-check: error: $*" >&2
    exit 2
}
step() { echo "== $*"; }

# --- 1. An NVIDIA GPU and its driver, or stop here ---------------------------------------------

command -v nvidia-smi >/dev/null 2>&1 ||
    fail "nvidia-smi not found: no NVIDIA GPU driver on this machine. These checks need an" \
        "NVIDIA GPU with CUDA 12 or newer drivers; on this machine the gpu tests only skip."
smi=$(nvidia-smi 2>&1) || fail "nvidia-smi failed (no GPU visible, or the driver is not loaded): $smi"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)
[[ -n $gpu ]] || fail "nvidia-smi lists no GPU"
driver_cuda=$(grep -oE 'CUDA Version: *[0-9]+\.[0-9]+' <<<"$smi" | grep -oE '[0-9]+\.[0-9]+$' || true)
[[ -n $driver_cuda ]] || fail "nvidia-smi does not say which CUDA version the driver supports"
driver_major=${driver_cuda%%.*}
step "GPU: $gpu (driver supports CUDA $driver_cuda)"

# On PyPI, onnxruntime-gpu up to 1.26 is built with CUDA 12 and from 1.27 on with CUDA 13; a
# driver runs any CUDA of its major version or older. The [cuda,cudnn] extras bring the CUDA
# runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN 9 as nvidia-* wheels: no system CUDA needed.
if [[ -z ${ORT_GPU_SPEC:-} ]]; then
    if ((driver_major >= 13)); then
        ORT_GPU_SPEC="onnxruntime-gpu[cuda,cudnn]>=1.27"
    elif ((driver_major == 12)); then
        ORT_GPU_SPEC="onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27"
    else
        fail "the driver supports CUDA $driver_cuda; onnxruntime-gpu needs CUDA 12 or newer drivers"
    fi
fi

# --- 2. The venv: the service's dependencies, test tools, onnxruntime-gpu alone -----------------

PYTHON=${PYTHON:-python3.11}
VENV=${GPU_VENV:-$ROOT/.cache/venv-gpu}
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found (set PYTHON to Python 3.11 or newer)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "$PYTHON is older than 3.11 (set PYTHON to Python 3.11 or newer)"
if [[ ${GPU_REINSTALL:-0} == 1 ]]; then
    rm -rf "$VENV"
fi
if [[ ! -x $VENV/bin/python ]]; then
    step "creating the venv $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV" ||
        fail "$PYTHON cannot create a venv (Debian/Ubuntu: apt-get install python3.11-venv)"
fi
PY=$VENV/bin/python
stamp=$VENV/.rocketserve-gpu-check
wanted="$ORT_GPU_SPEC $(sha256sum pyproject.toml | cut -c 1-16)"
if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
    step "installing into $VENV: the service's dependencies, test tools, $ORT_GPU_SPEC"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
    # pyproject.toml's requirements, except onnxruntime: onnxruntime-gpu provides the same
    # module, and the two in one environment overwrite each other's files.
    mapfile -t requirements < <(
        "$PY" - <<'EOF'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]


def name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


for requirement in project["dependencies"]:
    if name(requirement) != "onnxruntime":
        print(requirement)
tools = {"pytest", "pytest-asyncio", "pytest-timeout", "httpx", "onnx", "scikit-learn"}
seen = set()
for requirement in extras["dev"] + extras["export"]:
    if name(requirement) in tools - seen:
        seen.add(name(requirement))
        print(requirement)
# The fp16 converter (onnxruntime.transformers.float16) needs sympy: onnxruntime depends on it,
# onnxruntime-gpu only through an extra.
print("sympy")
EOF
    )
    ((${#requirements[@]} > 0)) || fail "could not read the requirements from pyproject.toml"
    "$PY" -m pip install -q --disable-pip-version-check "${requirements[@]}"
    "$PY" -m pip uninstall -q -y onnxruntime onnxruntime-gpu >/dev/null 2>&1 || true
    "$PY" -m pip install -q --disable-pip-version-check "$ORT_GPU_SPEC"
    echo "$wanted" >"$stamp"
fi
if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then
    fail "onnxruntime (CPU) is installed beside onnxruntime-gpu in $VENV; run with GPU_REINSTALL=1"
fi

# The CUDA and cuDNN libraries of the nvidia-* wheels, for every process started from here
# (pytest, the served side's python -m service): the loader reads this at process start.
nvidia_libs=$(
    "$PY" - <<'EOF'
import glob
import os
import site

found = {d for p in site.getsitepackages() for d in glob.glob(os.path.join(p, "nvidia", "*", "lib"))}
print(":".join(sorted(found)))
EOF
)
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# --- 3. ONNX Runtime really runs on the GPU (it falls back to CPU with only a warning) ---------

step "probing ONNX Runtime on the GPU"
ort=$(
    DRIVER_MAJOR=$driver_major "$PY" - <<'EOF'
import importlib
import os
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

try:
    built = importlib.import_module("onnxruntime.capi.build_and_package_info").cuda_version
except (ImportError, AttributeError):
    built = "?"
about = f"onnxruntime-gpu {ort.__version__} (built with CUDA {built})"
providers = ort.get_available_providers()
if "CUDAExecutionProvider" not in providers:
    sys.exit(f"{about} offers no CUDAExecutionProvider (only {', '.join(providers)})")
if built != "?" and int(built.split(".")[0]) > int(os.environ["DRIVER_MAJOR"]):
    sys.exit(f"{about} needs a newer driver; set ORT_GPU_SPEC to a build for this driver's CUDA")
graph = helper.make_graph(
    [helper.make_node("Relu", ["x"], ["y"])],
    "probe",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
if session.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit(f"{about}: a session could not use CUDA (ORT's error above: CUDA or cuDNN missing?)")
assert session.run(None, {"x": np.asarray([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
print(about)
EOF
) || fail "ONNX Runtime cannot run on this GPU (see above)"
step "$ort"

# --- 4. The tests marked gpu, then the bench ---------------------------------------------------

logs=$(mktemp -d "${TMPDIR:-/tmp}/rocketserve-gpu-check.XXXXXX")
tests=${GPU_TESTS:-tests/service/test_gpu.py}
step "tests marked gpu ($tests)"
set +e
# shellcheck disable=SC2086  # GPU_TESTS may name several paths
ROCKETSERVE_GPU_REQUIRED=1 timeout 240 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider $tests \
    2>&1 | tee "$logs/tests.log"
tests_rc=${PIPESTATUS[0]}
set -e

BENCH_MODEL=${BENCH_MODEL:-cifar10-teacher-wrn-40-2}
step "bench: $BENCH_MODEL served (batching on and off) against raw ONNX Runtime, all on CUDA"
set +e
timeout 180 "$PY" -m loadtest.served_vs_raw --model-repository models --model "$BENCH_MODEL" \
    --provider cuda --concurrency 1 64 --seconds "${BENCH_SECONDS:-3}" 2>&1 | tee "$logs/bench.log"
bench_rc=${PIPESTATUS[0]}
set -e

# --- 5. One summary -----------------------------------------------------------------------------

verdict() { if (($1 == 0)); then echo "ok"; else echo "FAILED (exit $1)"; fi; }
# pytest's last line: "6 passed, 2 deselected in 12.34s" (or "1 failed, ...", "no tests ran ...").
tests_line=$(grep -E ' in [0-9.]+s( \([0-9:]+\))?( =*)?$' "$logs/tests.log" | tail -n 1 |
    tr -d '=' | sed 's/^ *//;s/ *$//')
echo
echo "=================================== GPU check ==================================="
echo "GPU:          $gpu, driver CUDA $driver_cuda"
echo "ONNX Runtime: $ort, venv $VENV"
echo "gpu tests:    $(verdict "$tests_rc"): ${tests_line:-no summary line (see $logs/tests.log)}"
echo "bench:        $(verdict "$bench_rc") (served = python -m service on CUDA; raw = ORT CUDA session)"
sed -n '/^model /,$p' "$logs/bench.log" | sed 's/^/  /'
echo "took $((SECONDS - START)) s; logs in $logs"
if ((SECONDS - START > 300)); then
    echo "note: over the 5-minute budget (the first run's downloads count too)"
fi
((tests_rc == 0 && bench_rc == 0))
