# syntax=docker/dockerfile:1
#
# abuse-sidecar image: `docker build -t abuse-sidecar .`
#   stage "build"   builds the project wheel and collects every dependency as a wheel;
#   stage "runtime" installs those wheels into a slim Python, with no compiler, no pip and
#                   no build tools, and runs as an unprivileged user.
# The runtime writes nothing under / : it runs with a read-only root filesystem (the Helm
# chart mounts an emptyDir at /tmp, the only writable path it needs).

ARG PYTHON_VERSION=3.11.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from: a change to tests or docs does not rebuild this layer.
COPY pyproject.toml README.md constraints.txt ./
COPY sidecar ./sidecar
# Dependencies must come as binary wheels: no compiler is installed, here or below. The
# constraints are the versions CI tested, so the image runs what the tests ran.
RUN python -m pip wheel --wheel-dir /wheels --only-binary=:all: --no-binary=abuse-sidecar \
    -c constraints.txt .

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ARG UID=10001
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/tmp \
    TMPDIR=/tmp
LABEL org.opencontainers.image.title="abuse-sidecar" \
      org.opencontainers.image.description="Envoy ext_authz (v3 gRPC) service that stops API abuse" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${UID}" sidecar \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin sidecar
# Install from the wheels alone (no index), byte-compile once at build time (the root
# filesystem is read-only at run time), then remove the installers themselves.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels abuse-sidecar \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && python -m pip uninstall -y pip setuptools wheel \
    && rm -rf /root/.cache
USER ${UID}:${UID}
WORKDIR /tmp
# 9001 gRPC (Check, access-log stream, health), 9090 admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 9001 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["abuse-sidecar"]
CMD ["serve"]
