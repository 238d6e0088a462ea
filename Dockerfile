# syntax=docker/dockerfile:1
#
# ajs-identity-gateway container image.
#
#   docker build -t ajs-identity-gateway .
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#       -e SEGMENT_WRITE_KEY=... -e GATEWAY_STORE_URL=memory:// \
#       -e GATEWAY_SIGNING_KEYS=... ajs-identity-gateway
#
# Two stages: "build" installs the package and its dependencies into a
# virtualenv, compiling the HTML scanner (gateway/html/_speedups.c) with gcc;
# "runtime" copies only that virtualenv, so neither the source tree, the
# compiler nor pip's build dependencies end up in the final image.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C compiler for the compiled HTML scanner (the image has the Python headers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the project readme, so setuptools needs it;
# setup.py builds the compiled scanner.
COPY pyproject.toml README.md setup.py ./
COPY gateway ./gateway
# setup.py would install the pure-Python scanner if the compile failed: the
# image refuses to be built without the compiled one. (The check runs from /,
# or "python -c" would import the source tree in /src instead of the install.)
RUN pip install . \
    && cd / \
    && python -c "import gateway.html as h; assert h.IMPLEMENTATION == 'compiled', h.PURE_PYTHON_REASON" \
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
