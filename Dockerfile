# syntax=docker/dockerfile:1
# session-gateway: docker build -t session-gateway:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/config.toml:/etc/session-gateway/config.toml:ro" \
#     session-gateway:0.1.0
# Without a mounted file, pass settings instead of the default arguments:
#   docker run --rm session-gateway:0.1.0 --set upstream.url=http://bot:8000

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the dependencies, then the package --------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/session-gateway
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml ./
# The speedups (uvloop, aiohttp's C extras) and the Redis client (session.store = "redis") go in too.
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(p["dependencies"] + x["speedups"] + x["redis"]))' > requirements.txt \
 && /opt/session-gateway/bin/pip install --no-cache-dir --requirement requirements.txt
COPY README.md ./
COPY gateway ./gateway
RUN /opt/session-gateway/bin/pip install --no-cache-dir --no-deps .

# ---- runtime: the virtualenv on a clean base, as an unprivileged user ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/session-gateway/bin:$PATH
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it (the manifests use 10001 too).
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway
COPY --from=build /opt/session-gateway /opt/session-gateway
USER 10001:10001
# 8080: the proxy; 9090: /livez, /readyz, /metrics (keep it off public networks)
EXPOSE 8080 9090
ENTRYPOINT ["session-gateway", "serve"]
CMD ["--config", "/etc/session-gateway/config.toml"]
