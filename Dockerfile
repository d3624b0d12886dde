# The image Kubeflow runs for every step of the ctseg pipeline (`ctseg compile --image ...`).
# TensorFlow 2.15 is built against CUDA 12.2 and cuDNN 8.9: the base supplies both, and its
# Ubuntu 22.04 ships Python 3.10, the newest Python TFX 1.15 supports.
ARG CUDA_BASE=nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04

FROM ${CUDA_BASE} AS build
ARG UV_VERSION=0.13.9
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.10 python3.10-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3.10 -m venv /opt/uv \
 && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}" \
 && python3.10 -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/uv/bin/uv pip sync --no-cache --python /opt/venv/bin/python requirements.lock
COPY pyproject.toml README.md ./
COPY ctseg ./ctseg
COPY components ./components
COPY pipeline ./pipeline
COPY models ./models
COPY schemas ./schemas
RUN /opt/uv/bin/uv pip install --no-cache --no-deps --python /opt/venv/bin/python . \
 && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.10 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --shell /usr/sbin/nologin ctseg
COPY --from=build /opt/venv /opt/venv
# The compiled spec's ImportSchemaGen reads the curated schema from here (pipeline/kubeflow_runner.py IMAGE_SCHEMA_FILE).
COPY schemas /opt/ctseg/schemas
# The spec's commands are `python -m ctseg.pipeline.kubeflow_entrypoint` (TFX's v2 entrypoint behind
# corrections for KFP's backend): `python` must be the venv's, which holds TFX and the project.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /opt/ctseg
USER ctseg
CMD ["ctseg", "--help"]
