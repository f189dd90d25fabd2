"""``POST /api/v2/spans``: Zipkin v2 spans (JSON) into ``trace_edges``.

Only service-to-service links are kept, per minute: calls, errors and
summed duration of (caller service -> called service).  The caller of a
span is found, in order, from: the CLIENT span sharing its id (Zipkin's
shared-span model), its parent span in the same post, its
``remoteEndpoint.serviceName`` (a SERVER span that names its client).  A
CLIENT span whose server side is not in the post links to its
``remoteEndpoint.serviceName``.  Links within one service are dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

from flask import Blueprint, current_app

from api import queries
from api.errors import ApiError
from api.routes.common import get_store, json_body, require_token

__all__ = ["bp", "span_edges"]

bp = Blueprint("spans", __name__, url_prefix="/api/v2/spans")

MAX_SPANS = 100_000


def _service(endpoint: Any) -> str:
    if isinstance(endpoint, dict):
        name = endpoint.get("serviceName")
        if isinstance(name, str):
            return name.strip().lower()[:256]
    return ""


def _is_error(span: dict[str, Any]) -> bool:
    tags = span.get("tags") if isinstance(span.get("tags"), dict) else {}
    if "error" in tags:
        return True
    code = str(tags.get("http.status_code", ""))
    return code.isdigit() and int(code) >= 500


def span_edges(spans: list[Any]) -> list[dict[str, Any]]:
    """``trace_edges`` rows from a list of Zipkin v2 spans."""
    clean = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict):
            raise ApiError(400, f"span {i} must be an object")
        for key in ("traceId", "id"):
            if not isinstance(span.get(key), str) or not span[key]:
                raise ApiError(400, f"span {i} needs a string '{key}'")
        ts = span.get("timestamp")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or ts < 0):
            raise ApiError(400, f"span {i}: 'timestamp' must be epoch microseconds")
        dur = span.get("duration", 0)
        if isinstance(dur, bool) or not isinstance(dur, (int, float)) or dur < 0:
            raise ApiError(400, f"span {i}: 'duration' must be microseconds")
        clean.append(span)
    by_id: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for span in clean:
        by_id[(span["traceId"], span["id"])].append(span)
    answered: set[tuple[str, str]] = set()  # CLIENT spans whose server side is here
    links: list[tuple[str, str, dict[str, Any]]] = []
    for span in clean:
        me = _service(span.get("localEndpoint"))
        kind = span.get("kind")
        same = by_id[(span["traceId"], span["id"])]
        caller = ""
        if kind == "SERVER":
            client = next((s for s in same if s.get("kind") == "CLIENT"), None)
            parent = by_id.get((span["traceId"], str(span.get("parentId"))), [])
            if client is not None:
                caller = _service(client.get("localEndpoint"))
                answered.add((span["traceId"], span["id"]))
            elif parent:
                p = next((s for s in parent if s.get("kind") == "CLIENT"), parent[0])
                caller = _service(p.get("localEndpoint"))
                if p.get("kind") == "CLIENT":
                    answered.add((p["traceId"], p["id"]))
            else:
                caller = _service(span.get("remoteEndpoint"))
        elif kind not in ("CLIENT", "PRODUCER", "CONSUMER") and span.get("parentId"):
            parent = by_id.get((span["traceId"], str(span["parentId"])), [])
            if parent:
                caller = _service(parent[0].get("localEndpoint"))
        if caller and me and caller != me:
            links.append((caller, me, span))
    for span in clean:
        if span.get("kind") == "CLIENT" and (span["traceId"], span["id"]) not in answered:
            me, remote = _service(span.get("localEndpoint")), _service(span.get("remoteEndpoint"))
            if me and remote and me != remote:
                links.append((me, remote, span))
    agg: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for caller, callee, span in links:
        minute = int((span.get("timestamp") or 0) // 1_000_000) // 60 * 60
        if not 0 < minute < 2**32:
            continue
        a = agg[(minute, caller, callee)]
        a[0] += 1
        a[1] += int(_is_error(span))
        a[2] += int(span.get("duration") or 0)
    return [{"ts": ts, "parent_service": p, "child_service": c, "calls": n, "errors": e,
             "duration_us_sum": d} for (ts, p, c), (n, e, d) in sorted(agg.items())]


@bp.post("")
@require_token
def post_spans():
    spans = json_body(list)
    if len(spans) > MAX_SPANS:
        raise ApiError(413, f"at most {MAX_SPANS} spans per post")
    rows = span_edges(spans)
    # A retried post carries the same spans: the content is the dedup token.
    token = "zipkin:" + hashlib.sha256(json.dumps(spans, sort_keys=True, default=str).encode()).hexdigest()[:32]
    queries.insert_trace_edges(get_store(), rows, token)
    # New calls change the views of the windows they fall into; other windows keep theirs.
    current_app.extensions["phobos_cache"].forget_from(min((r["ts"] for r in rows), default=None))
    return {"spans": len(spans), "edges": len(rows)}, 202
