"""Liveness, readiness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from flask import Blueprint, Response, current_app

from api.errors import ApiError
from api.ingest import STATS
from api.routes.common import get_store

__all__ = ["bp", "REQUESTS", "record_request"]

bp = Blueprint("health", __name__)

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


@bp.get("/readyz")
def readyz():
    from api import queries

    try:
        ready = queries.ping(get_store())
    except Exception as err:  # any failure of the store means not ready
        raise ApiError(503, f"the store is not ready: {err}") from None
    if not ready:
        raise ApiError(503, "the store has no schema; run `phobos migrate`")
    return {"status": "ready"}


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@bp.get("/metrics")
def metrics():
    lines = [
        "# HELP phobos_api_up_seconds Seconds since the API process started.",
        "# TYPE phobos_api_up_seconds gauge",
        f"phobos_api_up_seconds {time.time() - _STARTED:.3f}",
        "# HELP phobos_ingest_batches_total Record batches ingested by this process.",
        "# TYPE phobos_ingest_batches_total counter",
        f"phobos_ingest_batches_total {STATS.batches}",
        "# HELP phobos_ingest_records_total Records ingested by this process, by kind and outcome.",
        "# TYPE phobos_ingest_records_total counter",
    ]
    with STATS._lock:
        accepted, rejected = dict(STATS.accepted), dict(STATS.rejected)
    for kind in sorted(set(accepted) | set(rejected)):
        lines.append(f'phobos_ingest_records_total{{kind="{_label(kind)}",outcome="accepted"}} {accepted.get(kind, 0)}')
        lines.append(f'phobos_ingest_records_total{{kind="{_label(kind)}",outcome="rejected"}} {rejected.get(kind, 0)}')
    lines += [
        "# HELP phobos_http_requests_total HTTP requests answered, by endpoint, method and status.",
        "# TYPE phobos_http_requests_total counter",
    ]
    with _LOCK:
        snapshot = sorted(REQUESTS.items())
    for (endpoint, method, status), (count, _) in snapshot:
        lines.append(f'phobos_http_requests_total{{endpoint="{_label(endpoint)}",method="{method}",'
                     f'status="{status}"}} {int(count)}')
    lines += [
        "# HELP phobos_http_request_seconds_total Time spent answering requests.",
        "# TYPE phobos_http_request_seconds_total counter",
    ]
    for (endpoint, method, status), (_, seconds) in snapshot:
        lines.append(f'phobos_http_request_seconds_total{{endpoint="{_label(endpoint)}",method="{method}",'
                     f'status="{status}"}} {seconds:.6f}')
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


@bp.get("/api/openapi.json")
def openapi():
    from api.openapi import openapi_spec

    return openapi_spec(current_app.config)
