# syntax=docker/dockerfile:1
# One image, two entrypoints: `datarecorder run` (a recorder pod, the default) and
# `datarecorder operator run` (the kopf operator). Build: docker build -t datarecorder .
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project's wheel plus binary wheels of every dependency -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# .dockerignore limits the context to what the wheel is built from.
COPY . .
# Dependencies must come as prebuilt wheels (--only-binary) so that no stage needs a compiler,
# at the versions of constraints.txt (the whole dependency set, pinned: two builds of one
# commit get the same packages); the project itself is a pure-Python wheel built from here.
RUN pip wheel --wheel-dir /wheels --only-binary=:all: --constraint constraints.txt .

# --- final: the wheels installed into a clean interpreter, nothing else ---------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HTTP_PORT=8080
RUN groupadd --system --gid 10001 datarecorder \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin datarecorder
# A bind mount instead of COPY keeps the wheel files out of the image's layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels data-recorder
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# For `docker run` / compose only (Kubernetes uses the pod's probes). An HTTP error or refused
# connection raises, so the check fails; the operator entrypoint serves no /health on this port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["datarecorder"]
CMD ["run"]
