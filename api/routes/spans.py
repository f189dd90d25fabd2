"""``POST /api/v2/spans``: Zipkin v2 spans (JSON) into ``spans``.

The spans are only stored here; the resolution stage links parents and
children across posts into calls between services as minutes close
(``api.resolution.traces``).
"""

from __future__ import annotations

import hashlib
import json

from flask import Blueprint, current_app

from api.errors import ApiError
from api.routes.common import get_store, json_body, require_token
from api.ingest.spans import SpanError, insert_spans, span_rows

__all__ = ["bp"]

bp = Blueprint("spans", __name__, url_prefix="/api/v2/spans")


@bp.post("")
@require_token
def post_spans():
    spans = json_body(list)
    try:
        rows = span_rows(spans)
    except SpanError as err:
        raise ApiError(err.status, str(err)) from None
    # A retried post carries the same spans: the content is the dedup token.
    token = "zipkin:" + hashlib.sha256(json.dumps(spans, sort_keys=True, default=str).encode()).hexdigest()[:32]
    insert_spans(get_store(), rows, token)
    # New calls change the views of the windows they fall into; other windows keep theirs.
    current_app.extensions["phobos_cache"].forget_from(
        min((r["start_us"] // 1_000_000 for r in rows), default=None))
    return {"spans": len(spans), "stored": len(rows)}, 202
