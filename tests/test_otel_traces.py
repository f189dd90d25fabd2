"""Three services instrumented with the real OpenTelemetry SDK, each exporting
Zipkin JSON through its own exporter, against a running ``phobos serve``:
their calls become edges of the map, joined parent -> child across posts by
the resolution stage, with provenance beside what TCP saw."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

import pytest

from test_api_serve import free_port, post, run_server

pytestmark = pytest.mark.slow

# the SDK and its exporter are test extras (setup.cfg), as pinned as the rest
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

REQUESTS = 6


def provider(service: str, url: str, batch: bool) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = ZipkinExporter(endpoint=url)
    tp.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000) if batch
                          else SimpleSpanProcessor(exporter))
    return tp


def get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def edges(view: dict) -> dict:
    return {(c["source"], c["target"]): c for c in view["connections"]}


def wait_for(check, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(0.5)


def test_three_services_with_their_own_exporters_draw_their_calls(tmp_path):
    from factories import connection, listener
    from tracer.records import format_ts

    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v2/spans"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOBOS_")}
    env["PHOBOS_RESOLVE_SETTLE"] = "5"
    cmd = [sys.executable, "-m", "api.commands.serve", "--store", f"chdb://{tmp_path}/db", "--port", str(port), "--migrate"]
    for _ in run_server(cmd, env, port):
        # frontend exports in a batch flushed at the end: its spans - the parents
        # of checkout's - arrive after the calls below them were stored and linked
        frontend = provider("frontend", url, batch=True)
        checkout = provider("checkout", url, batch=False)
        payments = provider("payments", url, batch=False)
        t_front, t_check, t_pay = (p.get_tracer("shop") for p in (frontend, checkout, payments))
        start = (int(time.time()) // 60 * 60 - 300) * 10**9  # five minutes ago: settled
        for i in range(REQUESTS):
            t = start + i * 20 * 10**9  # two minutes of requests, across minute boundaries
            root = t_front.start_span("GET /cart", kind=SpanKind.SERVER, start_time=t)
            call = t_front.start_span("POST checkout", kind=SpanKind.CLIENT, start_time=t + 1_000_000,
                                      context=otel_trace.set_span_in_context(root))
            # the server span's parent is the client span: OpenTelemetry's model
            serve = t_check.start_span("POST /checkout", kind=SpanKind.SERVER, start_time=t + 2_000_000,
                                       context=otel_trace.set_span_in_context(call))
            charge = t_check.start_span("POST payments", kind=SpanKind.CLIENT, start_time=t + 3_000_000,
                                        context=otel_trace.set_span_in_context(serve))
            pay = t_pay.start_span("POST /charge", kind=SpanKind.SERVER, start_time=t + 4_000_000,
                                   context=otel_trace.set_span_in_context(charge))
            if i == 0:
                pay.set_status(Status(StatusCode.ERROR, "card declined"))
            for span, end in ((pay, 9), (charge, 10), (serve, 11), (call, 12), (root, 13)):
                span.end(end_time=t + end * 1_000_000)
        checkout.force_flush()
        payments.force_flush()

        def linked(pair):
            rows = post(port, "/api/v1/sql", {"query": "SELECT caller, callee, sum(calls), sum(errors) "
                                              "FROM resolved_calls_1m GROUP BY caller, callee HAVING sum(n) > 0"})[1]
            return {(a, b): (int(n), int(e)) for a, b, n, e in rows["rows"]}.get(pair)

        # the stage linked checkout -> payments; frontend -> checkout has no caller yet
        assert wait_for(lambda: linked(("checkout", "payments"))) == (REQUESTS, 1)
        assert linked(("frontend", "checkout")) is None
        frontend.force_flush()
        assert wait_for(lambda: linked(("frontend", "checkout"))) == (REQUESTS, 0)

        # TCP saw frontend -> checkout too: that edge has both provenances
        at = start // 10**9 + 60
        status, _ = post(port, "/api/v1/ingest", {"batch_id": "tcp", "connections": [
            connection(ts=format_ts(at), service="frontend", remote_ip="10.0.0.9", remote_port=8080, connects=4)],
            "listeners": [listener(ts=format_ts(at), service="checkout", ip="10.0.0.9", port=8080,
                                   host="checkout-1")]})
        assert status == 200
        now = int(time.time())
        view = get(port, f"/api/v1/areas/unassigned?at={now}&window=15m")
        got = edges(view)
        front = got[("frontend", "checkout")]["metadata"]
        assert front["provenance"] == "both" and front["calls"] == REQUESTS and front["connects"] == 4
        pay = got[("checkout", "payments")]
        assert pay["metadata"]["provenance"] == "trace" and pay["metadata"]["call_errors"] == 1
        assert pay["metrics"]["traced"] > 0 and pay["metrics"]["normal"] == 0
        assert not any("INTERNET" in pair for pair in got)
        summary = get(port, f"/api/v1/services/checkout/summary?at={now}&window=15m")
        inbound = {d["name"]: d for d in summary["inbound"]}
        outbound = {d["name"]: d for d in summary["outbound"]}
        assert inbound["frontend"]["provenance"] == "both"
        assert outbound["payments"]["provenance"] == "trace" and outbound["payments"]["calls"] == REQUESTS
        # impact follows the traced dependency: frontend depends on payments through checkout
        impact = get(port, f"/api/v1/services/payments/impact?at={now}&window=15m")
        assert {u["name"] for u in impact["upstream"]} == {"checkout", "frontend"}
        for tp in (frontend, checkout, payments):
            tp.shutdown()
