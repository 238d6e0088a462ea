# syntax=docker/dockerfile:1
#
# ajs-identity-gateway container image.
#
#   docker build -t ajs-identity-gateway .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9901:9901 \
#       -e SEGMENT_WRITE_KEY=... ajs-identity-gateway
#
# Two stages: "build" installs the package and its dependencies into a
# virtualenv, compiling the HTML scanner (gateway/html/_speedups.c) with gcc;
# "runtime" copies only that virtualenv, so neither the source tree, the
# compiler nor pip's build dependencies end up in the final image.
#
# Reproducible: the base image is pinned by digest, and every Python package
# comes from requirements.lock at an exact version whose files pip checks
# against their sha256 (--require-hashes); nothing is resolved at build time.
# To refresh either pin, see deploy/README.md ("Refreshing the pins").

# python:3.11-slim on Debian bookworm (Python 3.11.16, the images built on
# 2026-08-25). The digest is what Docker uses; the tag only says what it is
# (python:3.11-slim itself now follows Debian trixie).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

# ---------------------------------------------------------------- build ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the compiled HTML scanner (the image has the Python headers).
# gcc and the C library headers are bookworm's current ones, the one part of the
# build not pinned: a newer patch release compiles the same source to other
# bytes, not other behaviour (tests/test_speedups.py fixes the behaviour), and
# the runtime stage checks that the result loads against its own C library.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The dependencies first, in a layer of their own (rebuilt only when the
# lock changes): exact versions, hashes checked, none resolved (--no-deps).
# The lock also pins setuptools, the build backend, for the step below.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# The package itself, built with the locked setuptools (no build isolation,
# which would download an unpinned one) and adding no dependency; pip check
# fails the build if the lock lacks one that pyproject.toml names.
# pyproject.toml names README.md as the project readme, so setuptools needs it;
# setup.py builds the compiled scanner. setup.py would install the pure-Python
# scanner if the compile failed: importing the extension makes the image
# refuse to be built without it. (From /, or "python -c" would import the
# source tree in /src instead of what was installed.)
COPY pyproject.toml README.md setup.py ./
COPY gateway ./gateway
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && cd / \
    && python -c "import gateway.html._speedups" \
    && python -m compileall -q /opt/venv

# -------------------------------------------------------------- runtime ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="ajs-identity-gateway" \
      org.opencontainers.image.description="Reverse proxy that keeps a Segment anonymousId across domains"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify the user.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway

COPY --from=build /opt/venv /opt/venv
# The compiled scanner loads against this stage's C library too (the gateway
# would fall back to the pure-Python one, slower, if it did not).
RUN cd / && python -c "import gateway.html._speedups"

# Default configuration; mount a file (or a ConfigMap directory) over
# /etc/gateway to replace it. Owned by root and read-only for the gateway.
COPY config/domains.yaml /etc/gateway/domains.yaml

USER 10001:10001
WORKDIR /tmp

# 8080: proxy traffic. 9901: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9901

# python:3.11-slim has no curl; use the interpreter that is already there.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "gateway", "serve", "--config", "/etc/gateway/domains.yaml", "--host", "0.0.0.0", "--admin-host", "0.0.0.0"]
