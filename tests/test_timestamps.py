"""The one time parser (``tracer/timestamps.py``) and the callers that word its errors.

Each caller keeps its own bounds and message: the record contract
(``tracer.records.parse_ts``), the API's query parameters
(``api.routes.common``), the Alertmanager webhook (``api.ingest.alerts``) and
``phobos simulate``'s flags.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

from tracer import timestamps
from tracer.timestamps import WIRE_FORMAT, format_ts, parse_duration, parse_iso, parse_time

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_docstring_examples():
    failed, tried = doctest.testmod(timestamps)
    assert tried and not failed


def test_wire_form_round_trips():
    assert format_ts(NOW) == "2026-01-01T00:00:00Z"
    assert parse_iso(format_ts(NOW)) == NOW
    from datetime import datetime, timezone

    assert datetime.strptime(format_ts(NOW), WIRE_FORMAT).replace(tzinfo=timezone.utc).timestamp() == NOW


@pytest.mark.parametrize("text, seconds", [
    ("2026-01-01T00:00:00Z", NOW), ("2026-01-01T00:00:00z", NOW), ("2026-01-01T00:00:00", NOW),
    (" 2026-01-01T00:00:00+00:00 ", NOW), ("2026-01-01T01:00:00+01:00", NOW),
    ("2026-01-01T00:00:00.123456789Z", NOW), ("2026-01-01", NOW),
])
def test_iso(text, seconds):
    assert parse_iso(text) == seconds


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "now", "-1h", "1767225600"])
def test_not_iso(text):
    assert parse_iso(text) is None


@pytest.mark.parametrize("text, seconds", [
    ("300", 300), ("300s", 300), ("5m", 300), ("5 m", 300), ("1.5h", 5400), ("1D", 86400), ("2w", 1_209_600),
])
def test_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5m", "5x", "m", "five minutes", "1e3"])
def test_not_a_duration(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("text, seconds", [
    ("now", NOW), (" now ", NOW), ("-90m", NOW - 5400), ("-24h", NOW - 86400), ("-7d", NOW - 7 * 86400),
    ("-30", NOW - 30), ("1767225600", NOW), ("1767225600.5", NOW + 0.5), ("2026-01-01T00:00:00Z", NOW),
])
def test_typed_time(text, seconds):
    assert parse_time(text, now=NOW) == seconds


@pytest.mark.parametrize("text", ["yesterday", "-3x", "--1h", "9" * 13, ""])
def test_not_a_typed_time(text):
    assert parse_time(text, now=NOW) is None


def test_callers_keep_their_bounds_and_messages():
    from api.ingest.alerts import AlertError, _time
    from api.simulation.simulate import parse_time as simulate_time
    from tracer.records import RecordError, parse_ts

    assert parse_ts("2026-01-01T00:00:00Z") == NOW and parse_ts(60) == 60
    with pytest.raises(RecordError, match="is not an ISO 8601 time"):
        parse_ts("-1h")  # the wire form has no relative times
    with pytest.raises(RecordError, match=re.escape("outside 1970..2106")):
        parse_ts("1969-12-31T23:59:59Z")
    assert _time("2026-01-01T00:00:00.123456789Z", "startsAt", 0) == NOW
    assert _time("0001-01-01T00:00:00Z", "endsAt", 0) == 0  # Alertmanager's "no end"
    with pytest.raises(AlertError, match=re.escape("alerts[2].startsAt='soon' is not an RFC 3339 time")):
        _time("soon", "startsAt", 2)
    assert simulate_time("-1h", NOW) == NOW - 3600
    with pytest.raises(ValueError, match="'soon' is not a time: use now, -90m"):
        simulate_time("soon", NOW)


def test_api_time_parameters_use_the_one_parser():
    from flask import Flask

    from api.errors import ApiError
    from api.routes import common

    app = Flask("t")
    app.config.update(DEFAULT_WINDOW=300, MAX_WINDOW=86400)
    with app.test_request_context("/?at=-2h&window=5m&bad=-3x"):
        assert common.parse_time("at", now=NOW) == NOW - 7200
        assert common.parse_window() == 300
        with pytest.raises(ApiError, match="'bad'='-3x' is not a time: use now, -2h"):
            common.parse_time("bad", now=NOW)


def test_only_the_time_module_parses_times():
    """Parsing times by hand elsewhere would bring back a second grammar."""
    allowed = {"tracer/timestamps.py"}
    found = []
    for layer in ("tracer", "api"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in allowed:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"fromisoformat|strptime\(", line) and "WIRE_FORMAT" not in line:
                    found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "times parsed outside tracer/timestamps.py:\n" + "\n".join(found)
