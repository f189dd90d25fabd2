"""``POST /api/v1/sql``: read-only SQL for analysts.

Body ``{"query": "...", "format": "json" | "csv"}``.  One SELECT, WITH,
SHOW, DESCRIBE, EXPLAIN or EXISTS statement, as ClickHouse's own parser
sees it; it runs with query-level ``readonly=1``, a row limit, a time limit
and a result size limit (``PHOBOS_SQL_MAX_ROWS``, ``PHOBOS_SQL_MAX_SECONDS``,
``PHOBOS_SQL_MAX_BYTES``).  Tables are named with their database, e.g.
``phobos.edges_1h``.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from api import queries
from api.errors import ApiError
from api.routes.common import get_config, get_store, json_body
from api.storage import StoreError

__all__ = ["bp"]

bp = Blueprint("sql", __name__, url_prefix="/api/v1/sql")


@bp.post("")
def run():
    body = json_body(dict)
    text, fmt = body.get("query"), body.get("format", "json")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'query' must be a non-empty string")
    if len(text) > 100_000:
        raise ApiError(400, "'query' is longer than 100000 characters")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "'format' must be json or csv")
    cfg = get_config()
    store = get_store()
    try:
        result = queries.run_sql(store, text, fmt, max_rows=cfg["SQL_MAX_ROWS"],
                                 max_seconds=cfg["SQL_MAX_SECONDS"], max_bytes=cfg["SQL_MAX_BYTES"])
    except queries.SQLRefused as err:
        raise ApiError(400, str(err)) from None
    except StoreError as err:
        raise ApiError(400, f"the query failed: {err}") from None
    if isinstance(result, str):
        if len(result.encode()) > cfg["SQL_MAX_BYTES"]:
            raise ApiError(400, f"the result is larger than {cfg['SQL_MAX_BYTES']} bytes")
        return Response(result, mimetype="text/csv")
    names, rows = result
    payload = json.dumps({"columns": names, "rows": [list(r) for r in rows], "count": len(rows)},
                         default=str)
    if len(payload) > cfg["SQL_MAX_BYTES"]:
        raise ApiError(400, f"the result is larger than {cfg['SQL_MAX_BYTES']} bytes")
    return Response(payload, mimetype="application/json")
