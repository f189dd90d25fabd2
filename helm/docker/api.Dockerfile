# Phobos API image: the Flask API and web UI under gunicorn, and the same
# `phobos` command for the ingest consumer and the migration/catalog jobs.
#
#   docker build -f helm/docker/api.Dockerfile -t phobos-api:0.1.0 .   # from the repository root
#
# Runs as the unprivileged uid/gid 10001 (the chart's api.podSecurityContext);
# the root filesystem can be read-only: writes go to /tmp and, for the
# embedded chDB store, to /var/lib/phobos/data (a volume).

# --- the web UI's third-party scripts, from the npm registry (never committed) ---
FROM node:20-bookworm-slim AS ui
WORKDIR /ui
COPY static/ ./
RUN if [ -f package.json ]; then npm ci --omit=dev --ignore-scripts --no-audit --no-fund; fi

# --- the phobos wheel (sql/ and static/ travel inside it as package data) ---
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY api/ api/
COPY tracer/ tracer/
COPY sql/ sql/
COPY --from=ui /ui/ static/
RUN pip install --no-cache-dir --disable-pip-version-check "setuptools>=68" wheel \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# --- runtime ---
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 phobos \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/phobos --shell /usr/sbin/nologin phobos \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/phobos /var/lib/phobos/data
COPY --from=wheel /wheels/ /wheels/
# The wheel's pinned dependencies (setup.cfg): chDB, pyarrow, clickhouse-driver,
# confluent-kafka, Flask, gunicorn, networkx, PyYAML - all manylinux wheels.
RUN pip install /wheels/phobos-*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/phobos
ENV PHOBOS_STORE=chdb:///var/lib/phobos/data
EXPOSE 8080
# One worker for chDB (one process per data directory); with a ClickHouse
# server raise --workers (the chart sets api.workers).
CMD ["gunicorn", "--workers=1", "--threads=8", "--bind=0.0.0.0:8080", "--worker-tmp-dir=/dev/shm", "--access-logfile=-", "api.app:create_app()"]
