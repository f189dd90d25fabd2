# Phobos tracer image: `phobos trace` with BCC from Debian.
#
#   docker build -f helm/docker/tracer.Dockerfile -t phobos-tracer:0.1.0 .   # from the repository root
#
# BCC: python3-bpfcc is BCC's Python module built by Debian against its own
# libbcc (the PyPI package named "bcc" is an unrelated project), so the
# tracer runs on Debian's python3 with a virtualenv that sees the system
# site-packages.
#
# Kernel headers are NOT in the image: BCC compiles its program against
# /lib/modules/$(uname -r)/build of the kernel it runs on, which differs from
# node to node. Mount the host's /lib/modules and /usr/src read-only (the
# chart does; `docker run -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro`)
# and install linux-headers-$(uname -r) on the hosts. Phobos takes struct
# offsets from the kernel's BTF (/sys/kernel/btf/vmlinux), so close-enough
# headers work for its tracepoint program where exact ones are unavailable.
#
# Runs as root, but needs only CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE (and
# CAP_SYS_PTRACE to attribute other users' processes): grant those, not
# --privileged. Host PID namespace and host network: --pid=host --net=host.

# --- the phobos wheel ---
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY api/ api/
COPY tracer/ tracer/
COPY sql/ sql/
COPY static/ static/
RUN pip install --no-cache-dir --disable-pip-version-check "setuptools>=68" wheel \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# --- runtime ---
FROM debian:bookworm-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PHOBOS_SPOOL_DIR=/var/lib/phobos/spool
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --system-site-packages /opt/phobos
COPY --from=wheel /wheels/ /wheels/
# --no-deps: the wheel's full dependency list brings the API's (chDB, pyarrow,
# Flask...). The tracer needs only these two, pinned as in setup.cfg.
RUN /opt/phobos/bin/pip install --no-deps /wheels/phobos-*.whl \
    && /opt/phobos/bin/pip install confluent-kafka==2.16.1 PyYAML==6.0.3 \
    && rm -rf /wheels \
    && /opt/phobos/bin/python -c "import bcc, confluent_kafka, yaml, tracer.agent" \
    && install -d -m 0700 /var/lib/phobos/spool
ENV PATH=/opt/phobos/bin:$PATH
EXPOSE 9435
# python -m tracer.agent is `phobos trace` without the API's imports; every
# flag has a PHOBOS_* environment variable (the chart sets them).
ENTRYPOINT ["/opt/phobos/bin/python", "-m", "tracer.agent"]
