"""Zipkin v2 spans linked into calls between services, across posts.

Spans arrive in posts from many services, each exporting its own (the
OpenTelemetry SDK gives every service its own exporter), so a call's two
sides - the caller's CLIENT span and the callee's SERVER span - usually
come in different posts, seconds or minutes apart (``api.ingest.spans``
keeps them as rows of the ``spans`` table). ``link_calls`` runs in the
resolution stage over the spans of whole traces (``spans_of_traces``) and finds, for each span
that answers a call, who called it:

* a SERVER span's caller is the service of the CLIENT span sharing its id
  (Zipkin's shared-span model), else of its parent span (a CLIENT parent
  preferred: OpenTelemetry's model, where the server span is the client
  span's child), else the service its ``remoteEndpoint`` names;
* a span of no kind (a local span) with a parent in another service links
  to that service;
* a CLIENT span whose server side never arrives links to the service its
  ``remoteEndpoint`` names, if it names one (OpenTelemetry's CLIENT spans
  mostly do not: their callee shows up only through its own SERVER span).

A call is counted in the minute its answering span started (the server's;
the client's when no server span was seen), with that span's error flag
and duration. Calls within one service are dropped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

from api.storage import Store

__all__ = ["Span", "link_calls", "spans_of_traces", "SPAN_COLUMNS"]

#: Columns of the ``spans`` table, in the order of ``Span``.
SPAN_COLUMNS = ("trace_id", "span_id", "parent_id", "kind", "local_service", "remote_service",
                "start_us", "duration_us", "error")


@dataclass(frozen=True)
class Span:
    """One stored span, as ``link_calls`` reads it."""

    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    local_service: str
    remote_service: str
    start_us: int
    duration_us: int
    error: int


def link_calls(spans: Iterable[Span], start: int, end: int) -> dict[tuple[int, str, str], list[int]]:
    """Calls answered by spans that start in ``[start, end)`` (epoch seconds).

    ``spans`` should hold the whole traces of those spans (their parents and
    children may start outside the range). Returns ``(minute, caller,
    callee) -> [calls, errors, duration_us]``.
    """
    spans = list(spans)
    by_id: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for span in spans:
        by_id[(span.trace_id, span.span_id)].append(span)
    answered: set[tuple[str, str]] = set()  # CLIENT spans whose server side is here
    for span in spans:
        if span.kind == "SERVER":
            answered.add((span.trace_id, span.span_id))
            if span.parent_id and any(p.kind == "CLIENT" for p in by_id.get((span.trace_id, span.parent_id), ())):
                answered.add((span.trace_id, span.parent_id))
    out: dict[tuple[int, str, str], list[int]] = {}

    def count(caller: str, span: Span) -> None:
        callee = span.local_service if span.kind != "CLIENT" else span.remote_service
        if not caller or not callee or caller == callee:
            return
        minute = span.start_us // 60_000_000 * 60
        sums = out.setdefault((minute, caller, callee), [0, 0, 0])
        sums[0] += 1
        sums[1] += span.error
        sums[2] += span.duration_us

    lo, hi = start * 1_000_000, end * 1_000_000
    for span in spans:
        if not lo <= span.start_us < hi:
            continue
        key = (span.trace_id, span.span_id)
        if span.kind == "SERVER":
            client = next((s for s in by_id[key] if s.kind == "CLIENT"), None)
            parents: Sequence[Span] = by_id.get((span.trace_id, span.parent_id), ()) if span.parent_id else ()
            if client is not None:
                caller = client.local_service
            elif parents:
                caller = next((p for p in parents if p.kind == "CLIENT"), parents[0]).local_service
            else:
                caller = span.remote_service
            count(caller, span)
        elif span.kind == "CLIENT":
            if key not in answered:
                count(span.local_service, span)
        elif not span.kind and span.parent_id:
            parents = by_id.get((span.trace_id, span.parent_id), ())
            if parents:
                count(parents[0].local_service, span)
    return out


def spans_of_traces(store: Store, start: int, end: int) -> list[Span]:
    """Every stored span of the traces with a span starting in ``[start, end)``
    (each span once, however often it was posted)."""
    db = store.db
    rows = store.query(
        f"""SELECT trace_id, span_id, parent_id, kind, local_service, remote_service,
                   start_us, duration_us, error
            FROM {db}.spans
            WHERE trace_id IN (SELECT trace_id FROM {db}.spans
                               WHERE ts >= toDateTime({{t0:UInt32}}, 'UTC') AND ts < toDateTime({{t1:UInt32}}, 'UTC'))
            LIMIT 1 BY trace_id, span_id, kind, local_service""",
        {"t0": start, "t1": end})
    return [Span(*row) for row in rows]
