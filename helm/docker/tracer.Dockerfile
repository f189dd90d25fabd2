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
# Flask...). The tracer needs only the Kafka sink's confluent-kafka and the
# catalog's PyYAML and google-re2 (--catalog), at the versions the wheel's
# metadata pins (setup.cfg is the one place they are written).
RUN /opt/phobos/bin/pip install --no-deps /wheels/phobos-*.whl \
    && /opt/phobos/bin/python -c "import re; from importlib.metadata import requires; pins = (re.match(r'([\w.-]+)\W*==\s*([\w.]+)', r) for r in requires('phobos')); print('\n'.join(f'{m[1]}=={m[2]}' for m in pins if m and m[1].lower() in ('confluent-kafka', 'pyyaml', 'google-re2')))" > /tmp/tracer-requirements.txt \
    && /opt/phobos/bin/pip install -r /tmp/tracer-requirements.txt \
    && rm -rf /wheels /tmp/tracer-requirements.txt \
    && /opt/phobos/bin/python -c "import bcc, confluent_kafka, yaml, re2, tracer.agent, tracer.catalog" \
    && /opt/phobos/bin/phobos trace --help > /dev/null \
    && install -d -m 0700 /var/lib/phobos/spool
ENV PATH=/opt/phobos/bin:$PATH
EXPOSE 9435
# `phobos trace` loads only the tracer (the command builds the options of the
# subcommand it runs); every flag has a PHOBOS_* environment variable (the
# chart sets them).
ENTRYPOINT ["/opt/phobos/bin/phobos", "trace"]
