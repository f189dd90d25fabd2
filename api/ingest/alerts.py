"""Prometheus Alertmanager notifications in (webhook payload version 4): rows of ``alerts``.

Each alert of a notification becomes one row.  The service is the first of
``PHOBOS_ALERT_SERVICE_LABELS`` (default ``service,app,job``) present among
the alert's labels; alerts without one are stored with an empty service
(they still show on the timeline).  Alertmanager sends the epoch-zero
``0001-01-01T00:00:00Z`` as the end of a firing alert; it is stored as 1970
(no end).  Views read them back as firing or not at a time
(``api.views.reads.firing_alerts``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from api.storage import Store
from tracer.timestamps import parse_iso

__all__ = ["AlertError", "alert_rows", "insert_alerts", "MAX_ALERTS"]


class AlertError(ValueError):
    """A payload that is not an Alertmanager notification; the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


MAX_ALERTS = 10_000


def _time(value: Any, field: str, index: int) -> int:
    if value in (None, ""):
        return 0
    if not isinstance(value, str):
        raise AlertError(400, f"alerts[{index}].{field} must be an RFC 3339 time")
    seconds = parse_iso(value)
    if seconds is None:
        raise AlertError(400, f"alerts[{index}].{field}={value!r} is not an RFC 3339 time")
    return seconds if 0 < seconds < 2**32 else 0


def _str_map(value: Any, field: str, index: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AlertError(400, f"alerts[{index}].{field} must be an object of strings")
    return {str(k)[:1024]: v[:4096] for k, v in value.items()}


def alert_rows(body: dict[str, Any], service_labels: tuple[str, ...], now: int) -> list[dict[str, Any]]:
    """Rows for ``alerts`` from an Alertmanager webhook payload (version 4)."""
    alerts = body.get("alerts")
    if not isinstance(alerts, list):
        raise AlertError(400, "'alerts' must be an array (Alertmanager webhook payload)")
    if len(alerts) > MAX_ALERTS:
        raise AlertError(413, f"at most {MAX_ALERTS} alerts per notification")
    rows = []
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise AlertError(400, f"alerts[{i}] must be an object")
        labels = _str_map(alert.get("labels"), "labels", i)
        annotations = _str_map(alert.get("annotations"), "annotations", i)
        status = alert.get("status", body.get("status", "firing"))
        if status not in ("firing", "resolved"):
            raise AlertError(400, f"alerts[{i}].status must be firing or resolved")
        starts = _time(alert.get("startsAt"), "startsAt", i) or now
        fingerprint = alert.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
        service = next((labels[k] for k in service_labels if labels.get(k)), "")
        rows.append({
            "received_at": now, "fingerprint": fingerprint[:256], "status": status,
            "alertname": labels.get("alertname", ""), "service": service,
            "severity": labels.get("severity", ""), "starts_at": starts,
            "ends_at": _time(alert.get("endsAt"), "endsAt", i),
            "summary": annotations.get("summary") or annotations.get("description") or "",
            "labels": labels, "annotations": annotations,
        })
    return rows


def insert_alerts(store: Store, rows: Sequence[dict[str, Any]]) -> int:
    """Store the rows of ``alert_rows``."""
    return store.insert_rows("alerts", list(rows)) if rows else 0
