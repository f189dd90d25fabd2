"""Liveness, readiness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from flask import Blueprint, Response, current_app, request

from api.errors import ApiError
from api.ingest.batches import STATS
from api.routes.common import get_store
from api.storage import Store
from api.storage.damage import MONITOR, RECOVERY_HINT, DamageReport, check_at_start
from tracer.prometheus import CONTENT_TYPE, Exposition

__all__ = ["bp", "REQUESTS", "record_request"]

bp = Blueprint("health", __name__)
log = logging.getLogger("phobos.health")

_LOCK = threading.Lock()
#: (endpoint, method, status) -> [count, seconds]
REQUESTS: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0, 0.0])
_STARTED = time.time()


def record_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    with _LOCK:
        entry = REQUESTS[(endpoint, method, status)]
        entry[0] += 1
        entry[1] += seconds


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.record_once
def _check_store_at_start(state) -> None:
    """Look for store damage as soon as an app is built around an open store.

    ``phobos serve`` opens the store before it builds the app, so damage is
    logged at start-up; an app that opens its store on first use (gunicorn)
    checks on the first ``/readyz`` or ``/metrics``.
    """
    store = state.app.extensions.get("phobos_store")
    if store is None:
        return
    try:
        check_at_start(store)
    except Exception as err:  # a check must never stop the API from starting
        log.warning("store damage check failed at start-up: %s", err)


def _damage(store: Store) -> DamageReport | None:
    try:
        return MONITOR.report(store)
    except Exception as err:
        log.warning("store damage check failed: %s", err)
        return None


@bp.get("/readyz")
def readyz():
    """Ready (200 ``ready``), degraded (200 ``degraded`` with the damage), or not ready (503).

    A store with broken parts or a damaged deduplication log still answers
    every query: taking the API out of rotation would hide the whole map
    and cannot repair anything, so degraded stays 200 - alert on
    ``phobos_store_damaged``. ``?strict=1`` makes degraded a 503, for
    checks that must not pass on a damaged store (a deploy gate, say).
    """
    from api.views import reads

    try:
        store = get_store()
        ready = reads.ping(store)
    except Exception as err:  # any failure of the store means not ready
        raise ApiError(503, f"the store is not ready: {err}") from None
    if not ready:
        raise ApiError(503, "the store has no schema; run `phobos migrate`")
    report = _damage(store)
    behind = _resolution_backlog()
    if report is None or not report.damaged:
        return {"status": "ready", **behind}
    body = {"status": "degraded", "reasons": report.reasons(), "damage": report.as_dict(),
            "recovery": RECOVERY_HINT, **behind}
    strict = request.args.get("strict", "").lower() in ("1", "true", "yes")
    return body, 503 if strict else 200


def _resolver():
    return current_app.extensions.get("phobos_resolver")


def _resolution_backlog() -> dict:
    """The resolution stage's progress while it has a backlog or trouble (views
    resolve what it has not reached, so the API is ready meanwhile)."""
    resolver = _resolver()
    if resolver is None:
        return {}
    p = resolver.progress
    if not p.pending and not p.pending_calls and not p.last_error:
        return {}
    return {"resolution": {"pending_minutes": p.pending, "pending_call_minutes": p.pending_calls,
                           "resolved_minutes": p.resolved_minutes,
                           "errors": p.errors, "last_error": p.last_error}}


#: (metric, type, help, progress field) of the resolution stage.
_RESOLUTION_METRICS = (
    ("pending_minutes", "gauge", "Settled minutes the resolution stage has still to resolve.", "pending"),
    ("minutes_total", "counter", "Minutes resolved (again, for late rows) by this process.", "resolved_minutes"),
    ("pending_call_minutes", "gauge", "Minutes with trace spans whose calls are still to link.", "pending_calls"),
    ("call_minutes_total", "counter", "Minutes whose calls were linked (again, for late spans) by this process.",
     "linked_minutes"),
    ("rounds_total", "counter", "Rounds of the resolution stage.", "rounds"),
    ("errors_total", "counter", "Rounds that failed (the store was unavailable, say).", "errors"),
    ("minute_seconds", "gauge", "Time the last resolution took per minute.", "last_minute_s"),
    ("last_resolved_timestamp_seconds", "gauge", "Newest minute resolved.", "last_resolved"),
    ("standing_by", "gauge", "1 while another stage holds the lease (server mode).", "standing_by"),
)


def _resolution_metrics(out: Exposition) -> None:
    resolver = _resolver()
    if resolver is None:
        return
    for name, kind, text, attr in _RESOLUTION_METRICS:
        value = getattr(resolver.progress, attr)
        out.metric(f"phobos_resolution_{name}", kind, text,
                   [(None, f"{float(value):g}" if isinstance(value, float) else int(value))])


def _damage_metrics(out: Exposition, report: DamageReport | None) -> None:
    """Store damage (``api.storage.damage``); None: the check could not run."""
    out.metric("phobos_store_damage_check_ok", "gauge", "Whether the last store damage check ran completely.",
               [(None, int(report is not None and not report.problems))])
    if report is None:
        return
    out.metric("phobos_store_damaged", "gauge",
               "1 when the store has broken parts or a damaged deduplication log.", [(None, int(report.damaged))])
    counts: dict[tuple[str, str], int] = {}
    for part in report.detached:
        counts[(part.table, part.reason)] = counts.get((part.table, part.reason), 0) + 1
    out.metric("phobos_store_detached_parts", "gauge",
               "Detached parts, by table and reason (empty reason: detached by a person).",
               [({"table": table, "reason": reason}, n) for (table, reason), n in sorted(counts.items())])
    broken: dict[str, list] = {}
    for part in report.broken_parts:
        broken.setdefault(part.table, []).append(part)
    out.metric("phobos_store_broken_parts", "gauge", "Parts ClickHouse detached as broken, by table.",
               [({"table": table}, len(parts)) for table, parts in sorted(broken.items())])
    out.metric("phobos_store_broken_rows", "gauge", "Rows in parts ClickHouse detached as broken, by table.",
               [({"table": table}, sum(p.rows or 0 for p in parts)) for table, parts in sorted(broken.items())])
    dedup: dict[str, list] = {}
    for item in report.dedup_logs:
        dedup.setdefault(item.table, []).append(item)
    out.metric("phobos_store_dedup_log_damaged", "gauge",
               "Damaged deduplication log files, by table (read at start-up; embedded store only).",
               [({"table": table}, len(items)) for table, items in sorted(dedup.items())])
    out.metric("phobos_store_dedup_records_ignored", "gauge",
               "Deduplication records ClickHouse did not load, by table.",
               [({"table": table}, sum(i.records_lost for i in items)) for table, items in sorted(dedup.items())])


@bp.get("/metrics")
def metrics():
    out = Exposition()
    out.metric("phobos_api_up_seconds", "gauge", "Seconds since the API process started.",
               [(None, f"{time.time() - _STARTED:.3f}")])
    out.metric("phobos_ingest_batches_total", "counter", "Record batches ingested by this process.",
               [(None, STATS.batches)])
    with STATS._lock:
        accepted, rejected = dict(STATS.accepted), dict(STATS.rejected)
    out.metric("phobos_ingest_records_total", "counter", "Records ingested by this process, by kind and outcome.",
               [sample for kind in sorted(set(accepted) | set(rejected))
                for sample in (({"kind": kind, "outcome": "accepted"}, accepted.get(kind, 0)),
                               ({"kind": kind, "outcome": "rejected"}, rejected.get(kind, 0)))])
    with _LOCK:
        snapshot = sorted(REQUESTS.items())
    out.metric("phobos_http_requests_total", "counter", "HTTP requests answered, by endpoint, method and status.",
               [({"endpoint": endpoint, "method": method, "status": status}, int(count))
                for (endpoint, method, status), (count, _) in snapshot])
    out.metric("phobos_http_request_seconds_total", "counter", "Time spent answering requests.",
               [({"endpoint": endpoint, "method": method, "status": status}, f"{seconds:.6f}")
                for (endpoint, method, status), (_, seconds) in snapshot])
    try:
        report = _damage(get_store())
    except Exception:  # the store cannot be opened: /readyz says why
        report = None
    _damage_metrics(out, report)
    _resolution_metrics(out)
    return Response(out.text(), content_type=CONTENT_TYPE)


@bp.get("/api/openapi.json")
def openapi():
    from api.openapi import openapi_spec

    return openapi_spec(current_app.config)
