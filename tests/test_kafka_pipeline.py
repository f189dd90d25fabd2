"""Tracer sink -> real Kafka broker -> phobos ingest -> real chDB -> rollups.

Every test uses topics of its own prefix on the session's broker
(tests/kafka.py), so tests do not see each other's messages.  The outage
tests stop the broker and start it again on the same port and data.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from confluent_kafka import Producer

from api.storage import StoreError
from api.ingest.contract import fast_table
from api.ingest.kafka_consumer import KafkaIngest
from api.ingest.kafka_topics import init_topics, kafka_statements, migrate_kafka, topics_for
from factories import T0, connection, listener
from kafka import kafka_broker  # noqa: F401 - pytest fixture
from tracer.kafka_sink import KafkaSink
from tracer.records import format_ts

pytestmark = pytest.mark.kafka


def fresh_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def stream(n: int, hosts: int = 4, offset: int = 0) -> list[dict]:
    """A recorded-looking stream: hosts, services, both directions, 2 hours of minutes."""
    out = []
    for i in range(offset, offset + n):
        out.append(connection(
            host=f"host-{i % hosts}", service=f"svc-{i % 13}", pid=1000 + i % 97,
            direction="outbound" if i % 5 else "inbound", remote_port=8000 + i % 7,
            remote_ip=f"10.1.{i % 5}.{i % 250 + 1}", connects=i % 9 + 1, closes=i % 4, open=i % 3,
            failures=int(i % 11 == 0), ts=format_ts(T0 + (i % 120) * 60),
        ))
    return out


def consume(store, broker, prefix: str, expect: int, group: str | None = None, timeout_s: float = 60.0,
            **kwargs) -> KafkaIngest:
    """Ingest the prefix's topics until ``expect`` records were handled (accepted or rejected)."""
    topics = {topic: kind for kind, topic in topics_for(prefix).items()}
    ingest = KafkaIngest(store, broker.bootstrap, topics, group=group or f"{prefix}-ingest",
                         batch_interval_s=0.3, conf={"session.timeout.ms": "6000"}, **kwargs)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ingest.poll(0.2)
            if ingest.counts["accepted"] + ingest.counts["rejected"] >= expect:
                break
        ingest.flush_all()
        # Anything beyond what was expected would show up now (doubles).
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            ingest.poll(0.2)
        ingest.flush_all()
    finally:
        ingest.consumer.close()
    return ingest


def totals(store) -> dict:
    db = store.db
    rows, connects, closes = store.query(f"SELECT count(), sum(connects), sum(closes) FROM {db}.connections")[0]
    m_records, m_connects = store.query(f"SELECT sum(records), sum(connects) FROM {db}.edges_1m")[0]
    h_connects = store.query(f"SELECT sum(connects) FROM {db}.edges_1h")[0][0]
    listeners = store.query(f"SELECT count() FROM {db}.listeners")[0][0]
    return {"rows": rows, "connects": connects, "closes": closes, "rollup_records": m_records,
            "rollup_connects": m_connects, "rollup_1h_connects": h_connects, "listeners": listeners}


def expected(records: list[dict], listeners: int = 0) -> dict:
    connects = sum(r["connects"] for r in records)
    return {"rows": len(records), "connects": connects, "closes": sum(r["closes"] for r in records),
            "rollup_records": len(records), "rollup_connects": connects, "rollup_1h_connects": connects,
            "listeners": listeners}


def make_sink(broker, prefix: str, tmp_path, host: str = "host-0", **opts) -> KafkaSink:
    return KafkaSink(f"kafka://{broker.bootstrap}/{prefix}", host=host, spool=str(tmp_path / f"spool-{host}"),
                     probe_s=0.3, **opts)


def test_topic_init_creates_missing_topics_once(kafka_broker):
    prefix = fresh_prefix()
    first = init_topics(kafka_broker.bootstrap, prefix, partitions=3, retention_hours=2)
    assert first == [f"created topic {prefix}.connections (3 partitions, retention 2 h)",
                     f"created topic {prefix}.listeners (3 partitions, retention 2 h)"]
    again = init_topics(kafka_broker.bootstrap, prefix, partitions=3)
    assert again == [f"topic {prefix}.connections exists", f"topic {prefix}.listeners exists"]


def test_end_to_end_counts_are_exact(kafka_broker, store, tmp_path):
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=3)
    records = stream(20_000)
    for r in records[::7]:  # health fields on some, as a newer tracer beside older ones
        r.update(handshakes=2, handshake_us_sum=900, handshake_hist=[2] + [0] * 31, retransmits=1, aborts=1)
    lis = [listener(host=f"host-{i}", port=8000 + i) for i in range(4)]
    sinks = [make_sink(kafka_broker, prefix, tmp_path, host=f"host-{h}", records_per_message=250) for h in range(4)]
    for start in range(0, len(records), 1000):  # ten-second intervals of four hosts
        chunk = records[start:start + 1000]
        sink = sinks[(start // 1000) % 4]
        sink.send(chunk, lis[(start // 1000) % 4: (start // 1000) % 4 + 1] if start < 4000 else [])
    for sink in sinks:
        sink.flush(30)
        assert sink.stats()["spool_pending_records"] == 0
        assert sink.dropped == 0 and sink.errors == 0
        sink.close()
    assert sum(s.sent for s in sinks) == len(records) + 4

    ingest = consume(store, kafka_broker, prefix, expect=len(records) + 4)
    assert ingest.counts["rejected"] == 0
    assert totals(store) == expected(records, listeners=4)
    n = len(records[::7])
    assert store.query(f"SELECT sum(handshakes), sum(handshake_us_sum), sum(retransmits), sum(aborts) "
                       f"FROM {store.db}.connections")[0] == (2 * n, 900 * n, n, n)
    assert store.query(f"SELECT sumForEachMerge(handshake_hist) FROM {store.db}.edges_1h")[0][0] == [2 * n] + [0] * 31
    stats = ingest.stats()
    assert stats["accepted"] == len(records) + 4


def test_broker_outage_mid_stream_spools_and_replays_exactly(kafka_broker, store, tmp_path):
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=2)
    sink = make_sink(kafka_broker, prefix, tmp_path, records_per_message=100)
    records = stream(12_000)
    chunks = [records[i:i + 500] for i in range(0, len(records), 500)]
    spooled_during_outage = 0
    for n, chunk in enumerate(chunks):
        sink.send(chunk, [])
        time.sleep(0.05)
        if n == 6:
            sink.flush(10)
            kafka_broker.stop()
            outage_started = time.monotonic()
        if 6 < n < 18:
            time.sleep(0.25)  # a few seconds without a broker
        if n == 18:
            spooled_during_outage = sink.stats()["spool_pending_records"]
            assert time.monotonic() - outage_started > 3
            kafka_broker.start()
    sink.flush(60)
    stats = sink.stats()
    sink.close()
    assert spooled_during_outage > 0, stats  # the outage really went through the spool
    assert stats["spool_pending_records"] == 0 and stats["dropped_records"] == 0, stats
    assert stats["replayed_records"] >= spooled_during_outage
    assert sink.sent == len(records)

    consume(store, kafka_broker, prefix, expect=len(records))
    assert totals(store) == expected(records)


def test_spool_limit_holds_under_a_long_outage_and_drops_are_counted(kafka_broker, store, tmp_path):
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=1)
    spool_dir = tmp_path / "spool"
    # A broker that never answers: the whole stream goes to a 256 KiB spool.
    dead = KafkaSink(f"kafka://127.0.0.1:1/{prefix}", host="host-0", spool=str(spool_dir), spool_mb=0.25,
                     records_per_message=50, probe_s=0.2)
    records = stream(6_000)
    for start in range(0, len(records), 300):
        dead.send(records[start:start + 300], [])
        time.sleep(0.01)
    dead.flush(1)
    dead.close()
    stats = dead.stats()
    assert stats["spool_bytes"] <= 256 * 1024, stats
    assert stats["dropped_records"] > 0 and dead.dropped == stats["dropped_records"], stats
    kept = stats["spool_pending_records"]
    assert kept + stats["dropped_records"] == len(records)

    # The broker is back (same spool directory): what was kept is replayed, the oldest were dropped.
    sink = KafkaSink(f"kafka://{kafka_broker.bootstrap}/{prefix}", host="host-0", spool=str(spool_dir),
                     records_per_message=50, probe_s=0.2)
    sink.flush(30)
    assert sink.stats()["spool_pending_records"] == 0
    assert sink.sent == kept
    sink.close()
    consume(store, kafka_broker, prefix, expect=kept)
    survivors = records[len(records) - kept:]
    assert totals(store) == expected(survivors)


def test_malformed_messages_land_in_dead_letters_and_the_pipeline_goes_on(kafka_broker, store):
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=1)
    topic = topics_for(prefix)["connections"]
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "message.max.bytes": 4 << 20,
                         "enable.idempotence": True})
    good = stream(100)
    wrong_type = connection(pid="one hundred")
    bad_version = connection(v=2)
    huge = b"\n".join([json.dumps(connection(pid=7)).encode()] * 4000)  # ~1.6 MB > 1 MiB limit
    messages = [
        b"\n".join(json.dumps(r).encode() for r in good[:50]),
        b'{"v":1,"ts": not json at all',
        json.dumps(wrong_type).encode(),
        json.dumps(bad_version).encode(),
        huge,
        # a message mixing good and bad lines: the good ones still land
        json.dumps(good[50]).encode() + b"\n{oops\n" + json.dumps(connection(direction="sideways")).encode(),
        b"\n".join(json.dumps(r).encode() for r in good[51:]),
    ]
    for value in messages:
        producer.produce(topic, value, b"host-x")
    assert producer.flush(30) == 0

    ingest = consume(store, kafka_broker, prefix, expect=len(good) + 6)
    assert ingest.counts["accepted"] == len(good)
    assert ingest.counts["rejected"] == 6
    assert totals(store) == expected(good)
    rows = store.query_dicts(f"SELECT source, kind, reason, raw FROM {store.db}.dead_letters ORDER BY source")
    reasons = {r["source"]: r["reason"] for r in rows}
    assert len(rows) == 6, rows
    assert set(reasons) == {f"kafka:{topic}/0@{where}" for where in
                            ("1 line 1", "2 line 1", "3 line 1", "4", "5 line 2", "5 line 3")}, rows
    assert all(r["kind"] == "connections" and r["source"].startswith(f"kafka:{topic}/0@") for r in rows)
    assert reasons[f"kafka:{topic}/0@1 line 1"].startswith("not JSON")
    assert "field 'pid' must be a whole number" in reasons[f"kafka:{topic}/0@2 line 1"]
    assert "unsupported record version 2" in reasons[f"kafka:{topic}/0@3 line 1"]
    assert "larger than the 1048576 bytes allowed" in reasons[f"kafka:{topic}/0@4"]
    assert reasons[f"kafka:{topic}/0@5 line 2"].startswith("not JSON")
    assert "direction" in reasons[f"kafka:{topic}/0@5 line 3"]
    assert any("raw message cut" in r["reason"] for r in rows)


def test_poison_records_become_dead_letters_and_the_partition_moves_on(kafka_broker, store):
    """Inputs that used to crash the consumer on every restart: a line nested 100,000 deep,
    a lone surrogate escape, bytes that are not UTF-8 - each beside a good record."""
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=1)
    topic = topics_for(prefix)["connections"]
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "message.max.bytes": 4 << 20})
    deep = b"[" * 100_000 + b"]" * 100_000
    surrogate = json.dumps(connection(pid=9)).replace('"comm": "curl"', '"comm": "\\ud800"').encode()
    good = [connection(pid=1), connection(pid=2), connection(pid=3)]
    for value in (json.dumps(good[0]).encode() + b"\n" + deep, surrogate + b"\n" + json.dumps(good[1]).encode(),
                  b'{"v": 1, "comm": "\xff"}', json.dumps(good[2]).encode()):
        producer.produce(topic, value, b"host-x")
    assert producer.flush(30) == 0
    group = f"{prefix}-ingest"
    ingest = consume(store, kafka_broker, prefix, expect=6, group=group)
    assert (ingest.counts["accepted"], ingest.counts["rejected"]) == (3, 3)
    assert sorted(r[0] for r in store.query(f"SELECT pid FROM {store.db}.connections")) == [1, 2, 3]
    reasons = sorted(r[0] for r in store.query(f"SELECT reason FROM {store.db}.dead_letters"))
    assert any("nested deeper" in r for r in reasons) and any("not valid Unicode" in r for r in reasons)
    assert any("not UTF-8" in r for r in reasons), reasons
    # a restarted consumer of the same group finds its offsets past the poison
    again = consume(store, kafka_broker, prefix, expect=1, group=group, timeout_s=5)
    assert again.counts["accepted"] + again.counts["rejected"] == 0
    assert store.query(f"SELECT count() FROM {store.db}.connections")[0][0] == 3


def test_fast_validation_accepts_exactly_what_the_contract_accepts():
    from api.ingest.contract import records_to_arrow
    from tracer.records import validate_batch

    records = stream(500) + [connection(remote_ip="2001:db8::1", local_ip="::ffff:10.0.0.9")]
    data = b"\n".join(json.dumps(r).encode() for r in records) + b"\n"
    fast = fast_table("connections", data, len(records))
    good, bad = validate_batch("connections", records)
    assert not bad and fast is not None
    assert fast.equals(records_to_arrow("connections", good))
    for broken in (connection(pid=-1), connection(pid=1.5), connection(ts="yesterday"), connection(v=2),
                   connection(remote_ip="10.0.0.300"), connection(extra=1), connection(comm="x" * 5000),
                   connection(direction="up"), connection(connects=True), connection(remote_port=70000)):
        line = json.dumps(broken).encode() + b"\n"
        assert fast_table("connections", data + line, len(records) + 1) is None, broken


def test_kafka_engine_ddl_is_created_by_chdb_and_reapplied_only_on_change(kafka_broker, store):
    prefix = fresh_prefix()
    with pytest.raises(StoreError, match="cannot keep Kafka engine tables"):
        migrate_kafka(store, kafka_broker.bootstrap, prefix=prefix)
    changes = migrate_kafka(store, kafka_broker.bootstrap, prefix=prefix, group=f"{prefix}-ch", allow_embedded=True)
    try:
        assert len(changes) == 1 and changes[0].startswith("applied kafka/001_queues.sql")
        objects = dict(store.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": store.db}))
        for name in ("connections_queue", "listeners_queue"):
            assert objects[name] == "Kafka"
        for name in ("connections_mv", "connections_dead_mv", "connections_offsets_mv",
                     "listeners_mv", "listeners_dead_mv", "listeners_offsets_mv"):
            assert objects[name] == "MaterializedView"
        printed = kafka_statements(store.db, kafka_broker.bootstrap, prefix=prefix, group=f"{prefix}-ch")
        assert len(printed) == 9 and sum("ENGINE = Kafka" in stmt for stmt in printed) == 2
        ddl = store.query(f"SHOW CREATE TABLE {store.db}.connections_queue")[0][0]
        assert "kafka_handle_error_mode = 'stream'" in ddl and f"{prefix}.connections" in ddl
        assert migrate_kafka(store, kafka_broker.bootstrap, prefix=prefix, group=f"{prefix}-ch", allow_embedded=True) == []
        moved = migrate_kafka(store, kafka_broker.bootstrap, prefix=prefix, group=f"{prefix}-other", allow_embedded=True)
        assert len(moved) == 1
        assert f"{prefix}-other" in store.query(f"SHOW CREATE TABLE {store.db}.listeners_queue")[0][0]
    finally:
        for name in ("connections_dead_mv", "connections_offsets_mv", "connections_mv", "listeners_dead_mv",
                     "listeners_offsets_mv", "listeners_mv", "connections_queue", "listeners_queue"):
            store.execute(f"DROP TABLE IF EXISTS {store.db}.{name}")


def test_kafka_engine_server_mode_end_to_end_on_chdb(kafka_broker, store):
    """ClickHouse consuming the topics itself: queue -> views -> connections,
    rollups, listeners; malformed messages -> dead_letters with the reason;
    offsets kept in kafka_offsets."""
    prefix = fresh_prefix()
    init_topics(kafka_broker.bootstrap, prefix, partitions=1)
    topics = topics_for(prefix)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True})
    good = stream(300)
    # a third of the records in the form with the optional NAT fields, the rest without (older tracers)
    for r in good[::3]:
        r.update(nat_ip="10.96.0.10", nat_port=80)
    # a fourth with health fields (the tracer's optional ones since sql/008_health.sql)
    hist = [0] * 32
    hist[3], hist[20] = 2, 1
    for r in good[1::4]:
        r.update(handshakes=3, handshake_us_sum=1_500_000, handshake_hist=hist, retransmits=4, aborts=1)
    for start in range(0, len(good), 100):
        producer.produce(topics["connections"], b"\n".join(json.dumps(r).encode() for r in good[start:start + 100]))
    bad = [b"garbage{", json.dumps(connection(pid="abc")).encode(), json.dumps(connection(v=2)).encode(),
           json.dumps(connection(remote_ip="nope")).encode(), json.dumps(connection(direction="up")).encode(),
           json.dumps(connection(connects=-1)).encode(),
           # inputs that once stopped the consumer: deep nesting, a lone surrogate, bytes not UTF-8, a zone
           b"[" * 100_000 + b"]" * 100_000,
           json.dumps(connection(pid=9)).replace('"comm": "curl"', '"comm": "\\ud800"').encode(),
           json.dumps(connection(pid=10)).replace('"comm": "curl"', '"comm": "\xff"').encode("latin-1"),
           json.dumps(connection(local_ip="fe80::1%eth0")).encode(),
           json.dumps(connection(nat_ip="nope", nat_port=80)).encode(), json.dumps(connection(nat_port=70000)).encode(),
           json.dumps(connection(handshakes=1, handshake_hist=[1] * 33)).encode(),
           json.dumps(connection(handshakes=1, handshake_hist=[-1] + [0] * 31)).encode()]
    for value in bad:
        producer.produce(topics["connections"], value)
    producer.produce(topics["listeners"], json.dumps(listener()).encode())
    assert producer.flush(30) == 0
    migrate_kafka(store, kafka_broker.bootstrap, prefix=prefix, group=f"{prefix}-ch", allow_embedded=True)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            done = totals(store)
            dead = store.query(f"SELECT count() FROM {store.db}.dead_letters")[0][0]
            if done["rows"] >= len(good) and dead >= len(bad) and done["listeners"]:
                break
            time.sleep(0.5)
        assert totals(store) == expected(good, listeners=1)
        reasons = [r[0] for r in store.query(f"SELECT reason FROM {store.db}.dead_letters "
                                             f"ORDER BY toUInt64(splitByChar('@', source)[2])")]
        assert len(reasons) == len(bad)
        assert reasons[0].startswith("unreadable message") and reasons[1].startswith("unreadable message")
        assert "unsupported record version 2" in reasons[2]
        assert "not an IP address" in reasons[3] and "'up'" in reasons[4] and "negative" in reasons[5]
        assert reasons[6].startswith("unreadable message") and reasons[7].startswith("unreadable message")
        assert "not valid UTF-8" in reasons[8] and "not an IP address" in reasons[9]
        assert "nat_ip is not an IP address" in reasons[10] and "too large" in reasons[11]
        assert "'handshake_hist' must hold 32 numbers or none" in reasons[12] and "negative" in reasons[13]
        # health reaches the raw table and the rollups, the histogram bucket by bucket
        with_health = good[1::4]
        want = (3 * len(with_health), 4 * len(with_health), len(with_health))
        assert store.query(f"SELECT sum(handshakes), sum(retransmits), sum(aborts) FROM {store.db}.connections")[0] \
            == want
        (m_hs, m_rt, m_ab, m_hist), = store.query(
            f"SELECT sum(handshakes), sum(retransmits), sum(aborts), sumForEachMerge(handshake_hist) "
            f"FROM {store.db}.edges_1m")
        assert (m_hs, m_rt, m_ab) == want and m_hist == [2 * len(with_health) * (i == 3) + len(with_health) * (i == 20)
                                                          for i in range(32)]
        nat = store.query(f"SELECT toString(nat_ip), nat_port, count() FROM {store.db}.connections "
                          f"GROUP BY nat_ip, nat_port ORDER BY nat_port")
        assert nat == [("::", 0, 200), ("::ffff:10.96.0.10", 80, 100)]
        kept = [json.loads(r[0]) for r in store.query(f"SELECT raw FROM {store.db}.dead_letters "
                                                      f"WHERE reason LIKE '%too large%'")]
        # the port out of range, and the negative count and histogram bucket without NAT fields (absent: null)
        assert sorted(str(r["nat_port"]) for r in kept) == ["70000", "None", "None"]
        offsets = store.query(f"SELECT count(), max(offset) FROM {store.db}.kafka_offsets FINAL "
                              "WHERE topic = {t:String}", {"t": topics["connections"]})[0]
        assert offsets == (3 + len(bad), 2 + len(bad))
    finally:
        for name in ("connections_dead_mv", "connections_offsets_mv", "connections_mv", "listeners_dead_mv",
                     "listeners_offsets_mv", "listeners_mv", "connections_queue", "listeners_queue"):
            store.execute(f"DROP TABLE IF EXISTS {store.db}.{name}")
