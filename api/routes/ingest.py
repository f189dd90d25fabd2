"""``POST /api/v1/ingest``: record batches from the tracer's http sink.

Body ``{"batch_id": "...", "connections": [...], "listeners": [...]}``.
Records are checked against the contract by ``api.ingest.batches.ingest_batch``:
good ones are stored (once, whatever the retries, thanks to the batch id),
bad ones are reported per index and kept in ``dead_letters``.  The answer
is 200 even when some records were refused - the sink must not retry a
batch the contract refuses - and 503 when the store failed, which it
retries.
"""

from __future__ import annotations

from flask import Blueprint, current_app

from api.errors import ApiError
from api.ingest.batches import ingest_batch
from api.ingest.dead_letters import dead_letter_row
from api.routes.common import get_store, json_body, require_token
from api.storage import StoreError

__all__ = ["bp"]

bp = Blueprint("ingest", __name__, url_prefix="/api/v1/ingest")

MAX_RECORDS = 200_000


@bp.post("")
@require_token
def ingest():
    try:
        body = json_body(dict, records_at=3)
    except ApiError as err:
        if err.status == 400:
            # Nothing of it can be read: keep it where an operator looks, then refuse it.
            _keep_refused_body(err.message)
        raise
    unknown = set(body) - {"batch_id", "connections", "listeners"}
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; expected "
                            f"batch_id, connections, listeners")
    batch_id = body.get("batch_id")
    if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 256):
        raise ApiError(400, "'batch_id' must be a string of 1 to 256 characters")
    batches = {}
    for kind in ("connections", "listeners"):
        records = body.get(kind, [])
        if not isinstance(records, list):
            raise ApiError(400, f"'{kind}' must be an array of records")
        batches[kind] = records
    if sum(len(r) for r in batches.values()) > MAX_RECORDS:
        raise ApiError(413, f"at most {MAX_RECORDS} records per batch")
    store = get_store()
    out = {"batch_id": batch_id}
    first: list[int] = []
    try:
        for kind, records in batches.items():
            result = ingest_batch(store, kind, records, batch_id=batch_id, source="api")
            out[kind] = result.as_dict()
            if result.first_ts is not None:
                first.append(result.first_ts)
    except StoreError as err:
        raise ApiError(503, f"the store failed; retry the batch: {err}") from None
    # New records change the views of the windows they fall into; other windows keep theirs.
    current_app.extensions["phobos_cache"].forget_from(min(first, default=None))
    return out


def _keep_refused_body(reason: str) -> None:
    from flask import request

    try:
        get_store().insert_rows("dead_letters", [dead_letter_row("body", "api", reason, request.get_data())])
    except StoreError:
        pass  # the 400 still tells the sender; the store's trouble shows in /readyz
