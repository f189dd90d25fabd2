"""Zipkin v2 spans in: a post (``POST /api/v2/spans``) becomes rows of the ``spans`` table.

Spans arrive in posts from many services, each exporting its own (the
OpenTelemetry SDK gives every service its own exporter), so a call's two
sides usually come in different posts; they are only kept here, a few hours
(``phobos migrate --span-ttl-hours``), and linked into calls by the
resolution stage as minutes close (``api.resolution.traces``).

What is kept of a span: its ids (lower-case hex, trace ids padded to 128
bits so a 64-bit id and its long form are one trace), kind, the services of
its local and remote endpoints (lower case), start and duration in
microseconds, and whether it failed (an ``error`` tag, OpenTelemetry's
``ERROR`` status, or an HTTP status from 500).
"""

from __future__ import annotations

from typing import Any, Sequence

from api.storage import Store

__all__ = ["SpanError", "TooManySpans", "span_rows", "insert_spans", "MAX_SPANS"]

#: Spans one post may carry.
MAX_SPANS = 100_000
_ID_CHARS = frozenset("0123456789abcdef")
_KINDS = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")


class SpanError(ValueError):
    """A post that is not a list of Zipkin v2 spans; the message says which span and why."""

    status = 400


class TooManySpans(SpanError):
    status = 413


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


def insert_spans(store: Store, rows: Sequence[dict[str, Any]], token: str | None) -> int:
    """Store the rows of ``span_rows`` (``token``: the post's deduplication token)."""
    return store.insert_rows("spans", list(rows), dedup_token=token) if rows else 0
