"""``/api/v1/timeline``: the time range with data, activity per bucket, incidents (the time slider)."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from api.errors import ApiError
from api.routes.common import get_store, parse_time
from api.views import reads
from tracer.records import format_ts

__all__ = ["bp"]

bp = Blueprint("timeline", __name__, url_prefix="/api/v1/timeline")


@bp.get("")
def timeline():
    store = get_store()
    text = request.args.get("buckets") or "96"
    if not text.isdigit() or not 1 <= int(text) <= 2000:
        raise ApiError(400, "parameter 'buckets' must be a whole number from 1 to 2000")
    span = reads.data_range(store)
    end = parse_time("to", default=span[1] if span else None)
    start = parse_time("from", default=max(span[0], end - 7 * 86400) if span else end - 86400)
    if start >= end:
        raise ApiError(400, "parameter 'from' must be earlier than 'to'")
    if end - start > 400 * 86400:
        raise ApiError(400, "at most 400 days per timeline")
    bucket = max(60, -(-(end - start) // int(text) // 60) * 60)
    if bucket >= 3600 or end - start > 12 * 3600:
        # Long ranges read the hourly rollup: a day of minutes is a scan of
        # every record, an hour bucket is what a time slider can show anyway.
        bucket = -(-bucket // 3600) * 3600
    first = start // bucket * bucket
    data = current_app.extensions["phobos_cache"].get(
        ("timeline", store.db, first, end, bucket), lambda: reads.timeline(store, first, end, bucket), end)
    return {
        "range": {"first": format_ts(span[0]), "last": format_ts(span[1])} if span else None,
        "from": format_ts(start), "to": format_ts(end), "bucket": bucket, **data,
    }
