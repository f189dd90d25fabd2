"""Zipkin v2 spans: what Phobos keeps of them, and how they link into calls.

Spans arrive in posts from many services, each exporting its own (the
OpenTelemetry SDK gives every service its own exporter), so a call's two
sides - the caller's CLIENT span and the callee's SERVER span - usually
come in different posts, seconds or minutes apart. ``span_rows`` turns a
post into rows of the ``spans`` table; ``link_calls`` runs in the
resolution stage over the spans of whole traces and finds, for each span
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
from typing import Any, Iterable, Sequence

__all__ = ["Span", "SpanError", "TooManySpans", "span_rows", "link_calls", "MAX_SPANS", "SPAN_COLUMNS"]

#: Spans one post may carry.
MAX_SPANS = 100_000
_ID_CHARS = frozenset("0123456789abcdef")
_KINDS = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
#: Columns of the ``spans`` table, in the order of ``Span``.
SPAN_COLUMNS = ("trace_id", "span_id", "parent_id", "kind", "local_service", "remote_service",
                "start_us", "duration_us", "error")


class SpanError(ValueError):
    """A post that is not a list of Zipkin v2 spans; the message says which span and why."""

    status = 400


class TooManySpans(SpanError):
    status = 413


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


def _service(endpoint: Any) -> str:
    if isinstance(endpoint, dict):
        name = endpoint.get("serviceName")
        if isinstance(name, str):
            return name.strip().lower()[:256]
    return ""


def _hex_id(value: Any, what: str, i: int, required: bool) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise SpanError(f"span {i} needs a string '{what}'")
    text = value.strip().lower()
    # Zipkin ids are 16 or 32 hex digits; a 64-bit trace id and its 128-bit
    # form with zeros in front are the same trace.
    if not 1 <= len(text) <= 32 or not set(text) <= _ID_CHARS:
        raise SpanError(f"span {i}: '{what}' must be up to 32 hex digits, got {value[:40]!r}")
    return text.rjust(32 if what == "traceId" else 16, "0")


def _is_error(span: dict[str, Any]) -> bool:
    tags = span.get("tags") if isinstance(span.get("tags"), dict) else {}
    if "error" in tags or str(tags.get("otel.status_code", "")).upper() == "ERROR":
        return True
    for key in ("http.status_code", "http.response.status_code"):
        code = str(tags.get(key, ""))
        if code.isdigit() and int(code) >= 500:
            return True
    return False


def span_rows(spans: Any) -> list[dict[str, Any]]:
    """Rows of the ``spans`` table from one post (a JSON list of Zipkin v2 spans).

    Raises
    ------
    SpanError
        When the post is not a list of spans, or a span lacks its ids, has
        a timestamp or duration that is not microseconds, or too many spans
        come at once. A span without a timestamp (allowed by Zipkin for a
        span still being reported) is skipped: it has no minute to count in.
    """
    if not isinstance(spans, list):
        raise SpanError("the body must be a JSON list of Zipkin v2 spans")
    if len(spans) > MAX_SPANS:
        raise TooManySpans(f"at most {MAX_SPANS} spans per post")
    rows = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict):
            raise SpanError(f"span {i} must be an object")
        trace_id = _hex_id(span.get("traceId"), "traceId", i, True)
        span_id = _hex_id(span.get("id"), "id", i, True)
        parent_id = _hex_id(span.get("parentId"), "parentId", i, False)
        ts = span.get("timestamp")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts < 2**32 * 1e6):
            raise SpanError(f"span {i}: 'timestamp' must be epoch microseconds")
        dur = span.get("duration", 0)
        if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not 0 <= dur < 2**63:
            raise SpanError(f"span {i}: 'duration' must be microseconds")
        kind = span.get("kind")
        if kind is not None and kind not in _KINDS:
            raise SpanError(f"span {i}: 'kind' must be one of {', '.join(_KINDS)}")
        if not ts:
            continue
        rows.append({"trace_id": trace_id, "span_id": span_id, "parent_id": parent_id, "kind": kind or "",
                     "local_service": _service(span.get("localEndpoint")),
                     "remote_service": _service(span.get("remoteEndpoint")),
                     "start_us": int(ts), "duration_us": int(dur or 0), "error": int(_is_error(span))})
    return rows


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
