"""The Kafka sink's on-disk spool (no broker needed) and the sink's URL handling."""

from __future__ import annotations

import pytest

from tracer.spool import Spool


def fill(spool: Spool, n: int, size: int = 100, records: int = 2) -> list[int]:
    return [spool.append("topic", b"host", bytes([i % 256]) * size, records) for i in range(n)]


def test_messages_come_back_in_order_and_survive_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048)
    seqs = fill(spool, 50)
    assert seqs == list(range(50)) and len(spool) == 50 and spool.pending_records == 100
    first = spool.read(10)
    assert [m.seq for m in first] == list(range(10)) and first[3].value == bytes([3]) * 100
    for m in first[:7]:
        spool.ack(m.seq, m.records)
    spool.ack(first[9].seq, first[9].records)  # delivered out of order: the cursor waits for 7 and 8
    assert len(spool) == 42 and spool.pending_records == 84
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048)
    replay = again.read(100)
    # After a restart what was delivered stays delivered, also 9 beyond the cursor.
    assert [m.seq for m in replay] == [7, 8] + list(range(10, 50))
    assert again.pending_records == 2 * 42
    assert again.append("topic", b"host", b"new") == 50


def test_rewind_skips_what_was_already_delivered(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 5)
    batch = spool.read(5)
    spool.ack(batch[1].seq, 2)
    spool.ack(batch[3].seq, 2)
    assert not spool.unread
    spool.rewind()  # e.g. the broker went away again during the replay
    assert [m.seq for m in spool.read(10)] == [0, 2, 4]


def test_size_limit_drops_oldest_and_counts_them(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024)
    fill(spool, 2000, size=100, records=3)
    assert spool.bytes <= 64 * 1024
    assert spool.dropped_records > 0
    assert spool.dropped_records + spool.pending_records == 2000 * 3
    assert spool.dropped_messages + len(spool) == 2000
    # What is left is the newest, still in order.
    left = spool.read(5000)
    assert [m.seq for m in left] == list(range(2000 - len(left), 2000))
    spool.close()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seg")) <= 64 * 1024


def test_a_torn_write_is_cut_at_start_up(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 3)
    spool.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\x00\x00\x00\x00\x00\x00\x00\x03partial")  # crash in the middle of a frame
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [m.seq for m in again.read(10)] == [0, 1, 2]
    assert again.append("topic", b"h", b"next") == 3


def test_kafka_sink_is_made_from_its_url(tmp_path):
    from tracer.kafka_sink import KafkaSink, parse_kafka_url
    from tracer.sinks import SinkError, make_sink

    assert parse_kafka_url("kafka://a:9092,b:9092/prod?spool_mb=5&sasl.mechanism=PLAIN") == (
        "a:9092,b:9092", "prod", {"spool_mb": "5", "sasl.mechanism": "PLAIN"})
    assert parse_kafka_url("kafka://a:9092")[1] == "phobos"
    sink = make_sink(f"kafka://127.0.0.1:1/p1?spool={tmp_path}&spool_mb=1&linger.ms=5", host="h1",
                     token=None, max_queue=10)
    try:
        assert isinstance(sink, KafkaSink)
        assert sink.topics == {"connections": "p1.connections", "listeners": "p1.listeners"}
        assert sink.spool.max_bytes == 1 << 20 and sink.key == b"h1"
    finally:
        sink.close()
    with pytest.raises(SinkError, match="unknown kafka sink option"):
        make_sink(f"kafka://127.0.0.1:1/p1?spool={tmp_path}&bogus=1", host="h1")
