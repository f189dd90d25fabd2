"""``POST /api/v1/alerts``: Prometheus Alertmanager webhook receiver (``api.ingest.alerts``)."""

from __future__ import annotations

import time

from flask import Blueprint, current_app

from api.errors import ApiError
from api.ingest.alerts import AlertError, alert_rows, insert_alerts
from api.routes.common import get_config, get_store, json_body, require_token

__all__ = ["bp"]

bp = Blueprint("alerts", __name__, url_prefix="/api/v1/alerts")


@bp.post("")
@require_token
def webhook():
    body = json_body(dict)
    try:
        rows = alert_rows(body, tuple(get_config()["ALERT_SERVICE_LABELS"]), int(time.time()))
    except AlertError as err:
        raise ApiError(err.status, str(err)) from None
    stored = insert_alerts(get_store(), rows)
    # New data may change any cached view.
    current_app.extensions["phobos_cache"].clear()
    return {"stored": stored}
