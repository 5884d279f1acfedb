# syntax=docker/dockerfile:1
# rocketserve serving image. Default target `runtime`: slim CPU image (no torch) serving /app/models.
# `--target gpu`: the same service with onnxruntime-gpu on a CUDA runtime base.

ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU_VERSION=1.20.1

# ---- build: the service and its runtime dependencies in a virtualenv ---------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` needs: the base dependencies of pyproject.toml, never the extras.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --no-compile . \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

# ---- gpu: onnxruntime-gpu on CUDA 12 + cuDNN 9 -------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ARG ONNXRUNTIME_GPU_VERSION
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
# onnxruntime and onnxruntime-gpu both install the `onnxruntime` module: never keep both.
RUN pip install --no-compile . \
    && pip uninstall -y onnxruntime \
    && pip install --no-compile "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
    && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
    && rm -rf /src
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROCKETSERVE_MODEL_REPOSITORY=/app/models \
    ROCKETSERVE_HOST=0.0.0.0 \
    ROCKETSERVE_PORT=8000 \
    ROCKETSERVE_GRPC_PORT=8001 \
    ROCKETSERVE_PROVIDER=cuda
RUN groupadd --system --gid 10001 rocketserve \
    && useradd --system --uid 10001 --gid rocketserve --no-create-home rocketserve
WORKDIR /app
COPY models ./models
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["python", "-m", "service"]

# ---- loadtest: locust and the project's locustfile (docker compose --profile loadtest) ---------
FROM python:${PYTHON_VERSION}-slim AS loadtest
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
RUN pip install --no-compile "locust==2.47.0" "httpx==0.28.1"
RUN groupadd --system --gid 10001 rocketserve \
    && useradd --system --uid 10001 --gid rocketserve --no-create-home rocketserve
WORKDIR /app
COPY loadtest ./loadtest
USER 10001:10001
ENTRYPOINT ["locust"]

# The last stage is the default target: plain `docker build .` gives the CPU image.
# ---- runtime: CPU image ------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROCKETSERVE_MODEL_REPOSITORY=/app/models \
    ROCKETSERVE_HOST=0.0.0.0 \
    ROCKETSERVE_PORT=8000 \
    ROCKETSERVE_GRPC_PORT=8001
RUN groupadd --system --gid 10001 rocketserve \
    && useradd --system --uid 10001 --gid rocketserve --no-create-home rocketserve
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY models ./models
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
CMD ["python", "-m", "service"]
