# syntax=docker/dockerfile:1
# One image, two entrypoints: `datarecorder run` (a recorder pod, the default) and
# `datarecorder operator run` (the kopf operator). Build: docker build -t datarecorder .
#
# Supply chain (docs/security.md, "Supply chain"): the base image is pinned by digest, every
# dependency by version and sha256 (requirements.lock, installed with --require-hashes), and
# the final stage holds the interpreter and one venv: no pip, setuptools, wheel or compiler.
#
# The base image, pinned by digest (a multi-arch index: linux/amd64 and linux/arm64). Both
# stages use the same one: the venv's python is a link to the base's /usr/local/bin/python.
# scripts/pin-images re-resolves the tag and rewrites the digest and the line below.
# python:3.11-slim, resolved 2026-08-18 from public records (pushed 2026-08-16): Python 3.11.16
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- builder: a venv with the locked dependencies and the project's wheel ------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The runtime venv is made without pip; the base image's pip installs into it (--python).
# Dependencies: exactly requirements.lock, each file checked against its sha256, binary wheels
# only (no stage compiles anything), no resolution (--no-deps: the lock is the whole set).
# The locks come before the sources so that this layer is cached across code changes.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv --without-pip /opt/datarecorder \
 && python -m pip --python /opt/datarecorder/bin/python install \
      --require-hashes --no-deps --only-binary=:all: -r requirements.lock
# The project's own wheel is built with the build backend of requirements-build.lock (hashed
# too) in a separate venv that never reaches the final stage.
RUN python -m venv /opt/build \
 && /opt/build/bin/python -m pip install \
      --require-hashes --no-deps --only-binary=:all: -r requirements-build.lock
# .dockerignore limits the context to what the wheel is built from.
COPY . .
RUN /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && python -m pip --python /opt/datarecorder/bin/python install --no-deps --no-index /wheels/*.whl \
 && python -m pip --python /opt/datarecorder/bin/python check \
 && rm -rf /opt/datarecorder/lib/python3*/site-packages/recorder/devstack

# --- final: the interpreter and the venv, nothing else --------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/datarecorder/bin:$PATH \
    HTTP_PORT=8080
# The base image's installers go: pip, setuptools and wheel (all of site-packages: the venv
# does not see it), their commands, and ensurepip, so no `python -m pip`/`ensurepip` either.
RUN groupadd --system --gid 10001 datarecorder \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin datarecorder \
 && find /usr/local/lib/python3.11/site-packages -mindepth 1 -maxdepth 1 ! -name README.txt \
      -exec rm -rf {} + \
 && rm -rf /usr/local/lib/python3.11/ensurepip /usr/local/bin/pip* /usr/local/bin/wheel
COPY --from=builder /opt/datarecorder /opt/datarecorder
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# For `docker run` / compose only (Kubernetes uses the pod's probes). An HTTP error or refused
# connection raises, so the check fails; the operator entrypoint serves no /health on this port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["datarecorder"]
CMD ["run"]
