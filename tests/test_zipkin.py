"""Spans as a second edge source: api/resolution/traces.py's linking (pure), and the
resolution stage joining parents and children that arrive in different
posts and minutes, against real chDB."""

from __future__ import annotations

import pytest

from api.ingest.spans import SpanError, TooManySpans, insert_spans, span_rows
from api.resolution.stage import Resolver
from api.resolution.tcp import Window
from api.resolution.traces import Span, link_calls, spans_of_traces
from api.views import reads
from factories import T0

M = T0 + 600  # a minute boundary; the spans are about six hours old


def sp(span_id, service, kind="", parent="", remote="", at=M + 5, trace="1", duration=2_000_000, error=0):
    return Span(trace.rjust(32, "0"), span_id.rjust(16, "0"), parent.rjust(16, "0") if parent else "", kind,
                service, remote, at * 1_000_000, duration, error)


def calls(spans, start=M - 3600, end=M + 3600):
    return {(a, b): v for (_m, a, b), v in link_calls(spans, start, end).items()}


# -- linking, pure ---------------------------------------------------------------

def test_opentelemetry_model_server_is_the_client_spans_child():
    spans = [sp("a", "web", "SERVER"), sp("b", "web", "CLIENT", parent="a"),
             sp("c", "api", "SERVER", parent="b", error=1)]
    assert calls(spans) == {("web", "api"): [1, 1, 2_000_000]}


def test_shared_span_model_and_remote_endpoint_fallbacks():
    spans = [sp("f", "api", "CLIENT", remote="db"), sp("f", "db", "SERVER"),       # shared id
             sp("d", "api", "CLIENT", remote="ledger"),                            # server never traced
             sp("e", "ledger", "SERVER", remote="batch"),                          # names its client
             sp("g", "api", "CLIENT")]                                             # names nobody
    assert calls(spans) == {("api", "db"): [1, 0, 2_000_000], ("api", "ledger"): [1, 0, 2_000_000],
                            ("batch", "ledger"): [1, 0, 2_000_000]}


def test_an_answered_client_span_does_not_count_its_remote_name_too():
    # OTel CLIENT spans may name a peer (say, by host); once the server span
    # arrives, the call is the server's, counted once.
    client = sp("b", "web", "CLIENT", remote="api-host")
    assert calls([client]) == {("web", "api-host"): [1, 0, 2_000_000]}
    assert calls([client, sp("c", "api", "SERVER", parent="b")]) == {("web", "api"): [1, 0, 2_000_000]}


def test_local_spans_link_to_their_parents_service_and_same_service_calls_drop():
    spans = [sp("a", "web", "SERVER"), sp("b", "web", parent="a"),            # web -> web: dropped
             sp("c", "worker", parent="b")]                                   # web -> worker
    assert calls(spans) == {("web", "worker"): [1, 0, 2_000_000]}


def test_calls_count_in_the_minute_of_the_answering_span_only():
    spans = [sp("b", "web", "CLIENT", at=M - 30), sp("c", "api", "SERVER", parent="b", at=M + 10)]
    assert link_calls(spans, M - 60, M) == {}                   # the caller's minute has no call
    assert link_calls(spans, M, M + 60) == {(M, "web", "api"): [1, 0, 2_000_000]}


def test_span_rows_normalise_and_refuse():
    (row,) = span_rows([{"traceId": "ABC", "id": "1", "parentId": "2", "kind": "SERVER", "timestamp": 1_700_000_000_000_000,
                         "duration": 12, "localEndpoint": {"serviceName": " Web "},
                         "tags": {"otel.status_code": "ERROR"}},
                        {"traceId": "abc", "id": "3"}])  # no timestamp: skipped
    assert row == {"trace_id": "abc".rjust(32, "0"), "span_id": "1".rjust(16, "0"), "parent_id": "2".rjust(16, "0"),
                   "kind": "SERVER", "local_service": "web", "remote_service": "", "start_us": 1_700_000_000_000_000,
                   "duration_us": 12, "error": 1}
    for bad, words in (({"id": "1"}, "traceId"), ({"traceId": "zz", "id": "1"}, "hex"),
                       ({"traceId": "1", "id": "1", "kind": "UP"}, "kind"),
                       ({"traceId": "1", "id": "1", "timestamp": -5}, "timestamp")):
        with pytest.raises(SpanError, match=words):
            span_rows([bad])
    with pytest.raises(TooManySpans):
        span_rows([{}] * 100_001)


# -- the stage: across posts and minutes -----------------------------------------

def zipkin(span_id, service, kind=None, parent=None, remote=None, at=M + 5, trace="1", error=False, duration=2):
    out = {"traceId": trace, "id": span_id, "timestamp": at * 1_000_000, "duration": duration * 1_000_000,
           "localEndpoint": {"serviceName": service}}
    if kind:
        out["kind"] = kind
    if parent:
        out["parentId"] = parent
    if remote:
        out["remoteEndpoint"] = {"serviceName": remote}
    if error:
        out["tags"] = {"error": ""}
    return out


def post(store, spans, token):
    insert_spans(store, span_rows(spans), token)


def stored_calls(store):
    rows = store.query(f"SELECT caller, callee, sum(calls), sum(errors) FROM {store.db}.resolved_calls_1m "
                       f"GROUP BY caller, callee HAVING sum(n) > 0 ORDER BY caller, callee")
    return {(a, b): (n, e) for a, b, n, e in rows}


def linked_fresh(store, start, end):
    out = {}
    for (_m, a, b), (n, e, _d) in link_calls(spans_of_traces(store, start, end), start, end).items():
        have = out.setdefault((a, b), (0, 0))
        out[(a, b)] = (have[0] + n, have[1] + e)
    return out


@pytest.fixture
def spans_store(store):
    store.migrate(span_ttl_hours=48)  # the spans are T0's, about six hours old
    return store


def test_a_parent_posted_minutes_after_its_children_links_them(spans_store):
    store = spans_store
    stage = Resolver(store, now=lambda: M + 3600)
    # api and db export first: the call api -> db and api's server span, whose
    # caller (web's client span, a minute earlier) is not here yet
    post(store, [zipkin("c", "api", "SERVER", parent="b", at=M + 70),
                 zipkin("d", "api", "CLIENT", parent="c", at=M + 71),
                 zipkin("e", "db", "SERVER", parent="d", at=M + 72, error=True)], "api+db")
    stage.run_once()
    assert stored_calls(store) == {("api", "db"): (1, 1)}
    assert stage.pending_calls() == []
    # web's spans arrive later: its client span starts in the minute before
    web = [zipkin("a", "web", "SERVER", at=M + 50, duration=30),
           zipkin("b", "web", "CLIENT", parent="a", at=M + 55, duration=20)]
    post(store, web, "web")
    assert sorted(stage.pending_calls()) == [M, M + 60]
    stage.run_once()
    assert stored_calls(store) == {("api", "db"): (1, 1), ("web", "api"): (1, 0)}
    assert stored_calls(store) == linked_fresh(store, M - 600, M + 600)
    # the same post again changes nothing
    post(store, web, "web")
    assert stage.pending_calls() == [] and stage.run_once() == 0
    # the views read what the stage linked, hourly rollup included
    for win in (Window.at(M + 600, 900), Window.at(M + 7200, 6 * 3600)):
        rows = reads.graph_rows(store, win)
        assert {(r["s_name"], r["d_name"]): (r["calls"], r["call_errors"]) for r in rows} == {
            ("api", "db"): (1, 1), ("web", "api"): (1, 0)}


def test_a_late_child_withdraws_its_callers_unanswered_call(spans_store):
    store = spans_store
    stage = Resolver(store, now=lambda: M + 3600)
    post(store, [zipkin("b", "web", "CLIENT", remote="api.internal", at=M + 10)], "web")
    stage.run_once()
    assert stored_calls(store) == {("web", "api.internal"): (1, 0)}
    # the server's span arrives later and starts in the next minute
    post(store, [zipkin("c", "api", "SERVER", parent="b", at=M + 61)], "api")
    stage.run_once()
    assert stored_calls(store) == {("web", "api"): (1, 0)} == linked_fresh(store, M - 600, M + 600)


def test_live_views_link_spans_the_stage_has_not_reached(spans_store):
    store = spans_store
    post(store, [zipkin("b", "web", "CLIENT", at=M + 10), zipkin("c", "api", "SERVER", parent="b", at=M + 11)], "x")
    win = Window.at(M + 300, 600)
    rows = reads.graph_rows(store, win)
    assert [(r["s_name"], r["d_name"], r["calls"], r["connects"]) for r in rows] == [("web", "api", 1, 0)]
    assert reads.graph_rows(store, win, dc="dc1") == []  # spans say nothing of datacenters
    Resolver(store, now=lambda: M + 3600).run_once()
    assert reads.graph_rows(store, win) == rows
    # a service only traces saw is still a node: it is found, and its views exist
    assert [s["name"] for s in reads.search(store, "ap", since=M + 600)["services"]] == ["api"]
    assert reads.service_exists(store, "api") and not reads.service_exists(store, "apx")


def test_calls_of_a_store_from_before_spans_carry_over(spans_store):
    store = spans_store
    store.insert_rows("trace_edges", [{"ts": M, "parent_service": "web", "child_service": "api", "calls": 3,
                                       "errors": 1, "duration_us_sum": 30}])
    stage = Resolver(store, now=lambda: M + 3600)
    stage.run_once()
    assert stored_calls(store) == {("web", "api"): (3, 1)}
    stage.run_once()
    assert stored_calls(store) == {("web", "api"): (3, 1)}
