"""Times as Phobos writes and reads them: the wire form, ISO 8601, durations, relative times.

What it parses: the records' wire form (``2026-11-26T10:00:00Z``), any ISO
8601 / RFC 3339 time (a naive one is UTC, ``Z`` or ``z`` is UTC, fractions
finer than a microsecond are cut: Go's Alertmanager sends nanoseconds),
durations (``300``, ``300s``, ``5m``, ``1.5h``, ``1d``, ``2w``) and the
times people type (``now``, ``-2h``, epoch seconds, ISO).  Each parser
returns ``None`` for text that is not one, so every caller words its own
error (an HTTP 400, a refused record, a usage message).

Lives on the tracer side because the record contract (``tracer.records``)
parses times and the tracer never imports ``api``; the API's query
parameters, the Alertmanager webhook and ``phobos simulate`` use it too.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

__all__ = ["WIRE_FORMAT", "format_ts", "parse_iso", "parse_duration", "parse_time"]

#: The records' ``ts`` as strftime/strptime writes it (whole seconds, UTC).
WIRE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_EPOCH = re.compile(r"\d{1,12}(\.\d+)?")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def format_ts(ts: float | int | datetime) -> str:
    """The wire form of a timestamp: ISO 8601, UTC, whole seconds, ``Z``.

    Examples
    --------
    >>> format_ts(0)
    '1970-01-01T00:00:00Z'
    """
    if isinstance(ts, datetime):
        dt = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    else:
        dt = datetime.fromtimestamp(int(ts), tz=timezone.utc)
    return dt.strftime(WIRE_FORMAT)


def parse_iso(text: str) -> int | None:
    """Seconds since the epoch of an ISO 8601 time, or ``None`` when ``text`` is not one.

    Examples
    --------
    >>> parse_iso("1970-01-01T00:01:00Z"), parse_iso("1970-01-01T01:00:00+01:00"), parse_iso("yesterday")
    (60, 0, None)
    """
    text = _FRACTION.sub(r"\1", text.strip())
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def parse_duration(text: str) -> float | None:
    """Seconds of a duration (``300``, ``300s``, ``5m``, ``1h``, ``1d``, ``1w``), or ``None``.

    Examples
    --------
    >>> parse_duration("5m"), parse_duration("1.5 H"), parse_duration("soon")
    (300.0, 5400.0, None)
    """
    match = _DURATION.match(text.strip().lower())
    if not match:
        return None
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_time(text: str, now: float | None = None) -> float | None:
    """Seconds since the epoch of a time a person typed, or ``None`` when it is not one.

    Accepted: ``now``; ``-`` and a duration before ``now`` (``-2h``, ``-30m``,
    ``-7d``); epoch seconds; ISO 8601.  No range check: callers bound it.

    Examples
    --------
    >>> parse_time("-1h", now=7200), parse_time("3600"), parse_time("1970-01-01T01:00:00Z")
    (3600.0, 3600.0, 3600)
    """
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("-"):
        seconds = parse_duration(text[1:])
        return None if seconds is None else now - seconds
    if _EPOCH.fullmatch(text):
        return float(text)
    return parse_iso(text)
