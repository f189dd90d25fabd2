"""The record contract: one field list in code, the same columns in sql/, one set of limits for both checks."""

import json

import pytest

from api.ingest.contract import fast_table, records_to_arrow
from factories import connection, listener
from tracer.records import (
    MAX_TEXT, RECORD_FIELDS, VERSION, RecordError, normalize_ip, parse_ts, validate, validate_batch,
)


@pytest.mark.parametrize("kind", sorted(RECORD_FIELDS))
def test_code_fields_equal_sql_columns(store, kind):
    columns = store.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        {"db": store.db, "t": kind},
    )
    assert [(f.name, f.sql) for f in RECORD_FIELDS[kind]] == [tuple(c) for c in columns]


def test_valid_records_are_normalised():
    rec = validate("connections", connection(remote_ip="10.1.2.3", ts="2026-01-02T03:04:05Z"))
    assert rec["remote_ip"] == "::ffff:10.1.2.3"
    assert rec["ts"] == 1767323045
    assert validate("listeners", listener(ip="fd00::1"))["ip"] == "fd00::1"


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"v": 2}, "v", "unsupported record version 2"),
        ({"remote_ip": "db.internal"}, "remote_ip", "not an IP address"),
        ({"connects": -1}, "connects", "must not be negative"),
        ({"connects": "3"}, "connects", "whole number"),
        ({"connects": True}, "connects", "whole number"),
        ({"local_port": 70000}, "local_port", "larger than 65535"),
        ({"direction": "sideways"}, "direction", "outbound, inbound"),
        ({"ts": "yesterday"}, "ts", "not an ISO 8601 time"),
        ({"host": 7}, "host", "must be a string"),
        ({"extra": 1}, "extra", "unknown fields extra"),
    ],
)
def test_bad_records_say_what_is_wrong(change, field, words):
    with pytest.raises(RecordError) as err:
        validate("connections", connection(**change))
    assert err.value.field == field
    assert words in str(err.value)


def test_missing_field_and_non_object():
    rec = connection()
    del rec["pid"]
    with pytest.raises(RecordError, match="missing field 'pid'"):
        validate("connections", rec)
    with pytest.raises(RecordError, match="JSON object"):
        validate("connections", [1, 2])
    with pytest.raises(RecordError, match="unknown record kind"):
        validate("sockets", connection())


def test_batch_keeps_good_records_and_indexes_bad_ones():
    good, bad = validate_batch("connections", [connection(), connection(open=-5), "junk", connection(pid=7)])
    assert [r["pid"] for r in good] == [100, 7]
    assert [(b.index, b.field) for b in bad] == [(1, "open"), (2, None)]


def test_time_and_ip_helpers():
    assert parse_ts(0) == 0
    assert parse_ts("1970-01-01T00:01:00") == 60
    with pytest.raises(RecordError):
        parse_ts(float("nan"))
    assert normalize_ip(" ::ffff:10.0.0.1 ") == "::ffff:10.0.0.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"


@pytest.mark.parametrize("kind", sorted(RECORD_FIELDS))
def test_the_column_check_and_the_record_check_share_their_limits(kind):
    """At every limit of the contract, the Kafka consumer's column check (``fast_table``)
    accepts what ``validate`` accepts and refuses what it refuses."""
    make = {"connections": connection, "listeners": listener}[kind]
    cases = [({"v": VERSION}, True), ({"v": VERSION + 1}, False)]
    for f in RECORD_FIELDS[kind]:
        if f.kind == "uint" and f.name != "v":
            cases += [({f.name: f.max}, True), ({f.name: f.max + 1}, False)]
        elif f.kind == "str":
            cases += [({f.name: "x" * MAX_TEXT}, True), ({f.name: "x" * (MAX_TEXT + 1)}, False)]
        elif f.kind == "enum":
            cases += [({f.name: choice}, True) for choice in f.choices] + [({f.name: "elsewhere"}, False)]
        elif f.kind == "uints":
            full, short = [f.max] * f.length, [0] * (f.length - 1)
            cases += [({f.name: full}, True), ({f.name: []}, True), ({f.name: [f.max + 1] + short}, False),
                      ({f.name: [-1] + short}, False), ({f.name: short}, False), ({f.name: full + [0]}, False),
                      ({f.name: [None] + short}, False), ({f.name: [1.5] + short}, False), ({f.name: 3}, False)]
        elif f.kind == "ip":
            cases += [({f.name: "10.96.0.10"}, True), ({f.name: "fd00:96::10"}, True), ({f.name: "::"}, True),
                      ({f.name: "svc.local"}, False), ({f.name: None}, False), ({f.name: "fe80::1%eth0"}, False)]
        if f.optional:
            cases += [({f.name: f.default}, True), ({f.name: None}, False)]
    for change, accepted in cases:
        record = make(**change)
        what = {k: f"{len(v)} characters" if isinstance(v, str) and len(v) > 40 else v for k, v in change.items()}
        good, _ = validate_batch(kind, [record])
        assert bool(good) is accepted, what
        table = fast_table(kind, json.dumps(record).encode() + b"\n", 1)
        assert (table is not None) is accepted, what
        if accepted:
            assert table.equals(records_to_arrow(kind, good)), what


def test_optional_fields_default_when_absent_and_are_checked_when_present():
    """nat_ip/nat_port came after v1: records of older tracers omit them and stay valid."""
    old = connection()
    assert "nat_ip" not in old and "nat_port" not in old
    rec = validate("connections", old)
    assert (rec["nat_ip"], rec["nat_port"]) == ("::", 0)
    rec = validate("connections", connection(nat_ip="10.96.0.10", nat_port=80))
    assert (rec["nat_ip"], rec["nat_port"]) == ("::ffff:10.96.0.10", 80)
    for change, words in (({"nat_ip": ""}, "not an IP address"), ({"nat_port": 65536}, "larger than 65535"),
                          ({"nat_port": -1}, "must not be negative"), ({"nat_ip": None}, "IP address string")):
        with pytest.raises(RecordError, match=words) as err:
            validate("connections", connection(**change))
        assert err.value.field == next(iter(change))
    required = [f.name for f in RECORD_FIELDS["connections"] if not f.optional]
    assert "nat_ip" not in required and "remote_ip" in required


@pytest.mark.parametrize("forms", [("old", "old"), ("new", "new"), ("old", "new"), ("new", "old", "new")])
def test_the_column_check_takes_batches_with_and_without_the_optional_fields(forms):
    """A batch of one form gives the exact path's table; a mixed batch goes to the exact path
    (or gives its table) - never another table."""
    make = {"old": lambda i: connection(pid=i),
            "new": lambda i: connection(pid=i, remote_ip="10.201.1.2", remote_port=8080,
                                        nat_ip="10.96.0.10", nat_port=80)}
    batch = [make[form](i) for i, form in enumerate(forms)]
    good, bad = validate_batch("connections", batch)
    assert not bad
    data = b"".join(json.dumps(r).encode() + b"\n" for r in batch)
    table = fast_table("connections", data, len(batch))
    if len(set(forms)) == 1:
        assert table is not None
    if table is not None:
        assert table.equals(records_to_arrow("connections", good))
    assert [r["nat_port"] for r in good] == [80 if f == "new" else 0 for f in forms]


HEALTH = {"handshakes": 3, "handshake_us_sum": 1_000_900, "retransmits": 4, "aborts": 1,
          "handshake_hist": [1, 1] + [0] * 24 + [1] + [0] * 5}


@pytest.mark.parametrize("forms", [("old", "old"), ("health", "health"), ("old", "health"), ("health", "quiet")])
def test_the_column_check_takes_batches_with_and_without_the_health_fields(forms):
    """Health fields came after v1 too: batches of tracers older than them, of newer ones, and
    mixed batches give the exact path's table (or go to it)."""
    make = {"old": lambda i: connection(pid=i),
            "health": lambda i: connection(pid=i, **HEALTH),
            "quiet": lambda i: connection(pid=i, handshakes=0, handshake_us_sum=0, retransmits=0, aborts=0,
                                          handshake_hist=[])}
    batch = [make[form](i) for i, form in enumerate(forms)]
    good, bad = validate_batch("connections", batch)
    assert not bad
    data = b"".join(json.dumps(r).encode() + b"\n" for r in batch)
    table = fast_table("connections", data, len(batch))
    if len(set(forms)) == 1 or set(forms) == {"health", "quiet"}:
        assert table is not None
    if table is not None:
        assert table.equals(records_to_arrow("connections", good))
    assert [r["handshake_hist"] for r in good] == [HEALTH["handshake_hist"] if f == "health" else []
                                                  for f in forms]


def test_health_reaches_the_rollups_summed_and_merged_bucket_by_bucket(store):
    """edges_1m and edges_1h sum the health figures of records with and without them, the
    histogram bucket by bucket; the counts of the rollup are not doubled by the health view."""
    from api.ingest.batches import ingest_batch

    batch = [connection(pid=1, **HEALTH), connection(pid=1, **HEALTH), connection(pid=1),
             connection(pid=1, connects=0, closes=1, handshakes=0, handshake_hist=[], retransmits=2, aborts=0,
                        handshake_us_sum=0)]
    ingest_batch(store, "connections", batch, batch_id="health")
    for table in ("edges_1m", "edges_1h"):
        rows = store.query(
            f"SELECT sum(records), sum(connects), sum(closes), sum(handshakes), sum(handshake_us_sum), "
            f"sum(retransmits), sum(aborts), sumForEachMerge(handshake_hist) FROM {store.db}.{table}")
        hist = [2 * n for n in HEALTH["handshake_hist"]]
        assert [tuple(r) for r in rows] == [(4, 3, 4, 6, 2 * 1_000_900, 10, 2, hist)], table
