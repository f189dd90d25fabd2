"""``POST /api/v1/sql``: read-only SQL for analysts.

Body ``{"query": "...", "format": "json" | "csv"}``. One statement that
reads Phobos' own tables (``api.analysts.sql`` decides on ClickHouse's parse
of it), run on a read-only connection of its own with limits on time,
memory, rows and result size (``PHOBOS_SQL_MAX_SECONDS``,
``PHOBOS_SQL_MAX_MEMORY``, ``PHOBOS_SQL_MAX_ROWS``, ``PHOBOS_SQL_MAX_BYTES``)
and at most ``PHOBOS_SQL_CONCURRENCY`` at once (one more gets 429). Needs a
bearer token (``PHOBOS_READ_TOKEN`` or ``PHOBOS_TOKEN``) unless the server
is bound to loopback. Unqualified table names mean Phobos' tables.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from api.analysts.sql import ReadersBusy, SQLRefused, run_sql
from api.errors import ApiError
from api.routes.common import get_config, get_sql_readers, json_body, require_read_token
from api.storage import StoreError

__all__ = ["bp"]

bp = Blueprint("sql", __name__, url_prefix="/api/v1/sql")

#: A freed reader is usually only this far away; longer waits are the client's to make.
_WAIT_S = 0.25


@bp.post("")
@require_read_token
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
    try:
        with get_sql_readers().reader(wait_s=_WAIT_S) as reader:
            result = run_sql(reader, text, "json" if fmt == "json" else "CSVWithNames")
    except ReadersBusy as err:
        raise ApiError(429, str(err), retry_after_s=1) from None
    except SQLRefused as err:
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
