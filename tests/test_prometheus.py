"""The one Prometheus exposition (``tracer/prometheus.py``) and the three places that expose through it."""

from __future__ import annotations

import doctest
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tracer import prometheus
from tracer.prometheus import CONTENT_TYPE, Exposition, MetricsServer

ROOT = Path(__file__).resolve().parent.parent


def test_docstring_examples():
    failed, tried = doctest.testmod(prometheus)
    assert tried and not failed


def test_families_samples_and_escaping():
    out = Exposition()
    out.metric("a_total", "counter", "As.", [(None, 3)])
    out.metric("b", "gauge", "Bs by x.", [({"x": 'q"\\\n', "y": 1}, 0.5), ({"x": "", "y": 2}, True)])
    out.metric("c", "gauge", "No samples yet.")
    assert out.text() == (
        "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n"
        "# HELP b Bs by x.\n# TYPE b gauge\n"
        'b{x="q\\"\\\\\\n",y="1"} 0.5\nb{x="",y="2"} 1\n'
        "# HELP c No samples yet.\n# TYPE c gauge\n")


def test_server_serves_metrics_and_health():
    state = {"ok": True, "n": 0}

    def render() -> str:
        state["n"] += 1
        return f"x {state['n']}\n"

    server = MetricsServer(render, "127.0.0.1", 0, healthy=lambda: state["ok"])
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(base + "/metrics?x=1") as response:
            assert response.read().decode() == "x 1\n" and response.headers["Content-Type"] == CONTENT_TYPE
        assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz")
        assert err.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/")
        assert err.value.code == 404
    finally:
        server.close()


def test_no_health_path_without_a_health_function():
    server = MetricsServer(lambda: "", "127.0.0.1", 0)
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz")
        assert err.value.code == 404
    finally:
        server.close()


def test_the_kafka_consumers_metrics():
    from api.commands.ingest import _serve_metrics, prometheus_text

    text = prometheus_text({"accepted": 7, "rejected": 1, "batches": 2, "rows_per_s": 3.5,
                            "lag": {"p.connections/1": 4, "p.connections/0": 0}})
    assert 'phobos_ingest_records_total{outcome="accepted"} 7' in text
    assert 'phobos_ingest_records_total{outcome="rejected"} 1' in text
    assert "phobos_ingest_batches_total 2" in text and "phobos_ingest_rows_per_second 3.5" in text
    assert text.index('partition="0"} 0') < text.index('phobos_ingest_lag_messages{topic="p.connections",partition="1"} 4')

    class Ingest:
        counts = {"accepted": 0, "rejected": 0, "batches": 0}

    server, cache = _serve_metrics(0, Ingest())
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert "phobos_ingest_batches_total 0" in urllib.request.urlopen(url).read().decode()
        cache["text"] = text
        assert urllib.request.urlopen(url).read().decode() == text
    finally:
        server.close()


def test_only_the_exposition_writes_prometheus_text():
    """A second writer of ``# TYPE`` lines would be a second exposition to keep right."""
    found = []
    for layer in ("tracer", "api"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "tracer/prometheus.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"# (TYPE|HELP) |BaseHTTPRequestHandler", line):
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "Prometheus text written outside tracer/prometheus.py:\n" + "\n".join(found)
