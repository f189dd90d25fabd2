"""Kafka -> ClickHouse: the consumer (``phobos ingest``), topic set-up
(``phobos kafka init``) and the Kafka-engine schema (``phobos migrate --kafka``).

Messages (written by ``tracer.kafka_sink``): JSON lines (``JSONEachRow``), one
or more records per message, connection records on ``PREFIX.connections`` and
listener records on ``PREFIX.listeners`` (default prefix ``phobos``), key =
host.

Consumer mode (``KafkaIngest``; how the embedded chDB store ingests, and an
option for servers).  Messages are gathered per partition into batches of up
to ``batch_records`` records or ``batch_interval_s`` seconds, validated with
the record contract, inserted, and only then is the partition's offset
committed (at-least-once).  A batch is the offset range ``first..last`` of one
partition and its insert carries the token ``KIND:TOPIC/PARTITION/FIRST-LAST``;
every table and rollup keeps a deduplication window, so a batch inserted twice
is stored once.  For that the replayed batch must have the *same* boundaries:
before inserting, the consumer commits the batch's *start* offset with the
metadata ``phobos-batch:FIRST-LAST`` (an intent), and after the insert the
offset ``LAST+1``.  A consumer that starts (after a crash, SIGKILL, or a
rebalance) on a partition whose committed metadata is an intent re-reads
exactly ``FIRST..LAST`` as its first batch.  Two synchronous commits per
batch are the price; batches are large.

Unreadable input is never dropped silently: a message larger than
``max_message_bytes``, a line that is not JSON, or a record the contract
refuses goes to ``dead_letters`` with the reason and its source
``kafka:TOPIC/PARTITION@OFFSET`` (line N), and the pipeline keeps going.

Validation has two paths that accept exactly the same records: a vectorised
one (Arrow's JSON reader with the contract's schema plus range, enum, length
and time checks on whole columns; IPs normalised once per distinct value)
for batches in the form the tracer writes, and ``tracer.records.validate``
per record for any batch the fast path does not fully accept.

Server mode: ``migrate_kafka`` applies ``sql/kafka/*.sql`` (Kafka engine
queues, materialized views into ``connections``/``listeners``, a dead-letter
view) so that a ClickHouse server consumes the topics itself.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from api.ingest import STATS, IngestResult, Undecodable, dead_letter_row, decode_record, records_to_arrow
from api.storage import DEFAULT_STORE_URL, StoreError, open_store
from api.storage.migrations import KAFKA_SQL_DIR, apply_kafka_schema, kafka_schema_statements
from tracer.records import RECORD_FIELDS, U32, VERSION, Rejection, normalize_ip, validate_batch

__all__ = [
    "DEFAULT_PREFIX", "DEFAULT_GROUP", "DEFAULT_ENGINE_GROUP", "KAFKA_SQL_DIR",
    "KafkaIngest", "topics_for", "init_topics", "migrate_kafka", "kafka_statements", "fast_table",
    "configure_parser", "run", "configure_kafka_parser", "run_kafka",
    "configure_migrate_parser", "migrate_from_args",
]

log = logging.getLogger("phobos.kafka_ingest")

DEFAULT_PREFIX = "phobos"
DEFAULT_GROUP = "phobos-ingest"
DEFAULT_ENGINE_GROUP = "phobos-clickhouse"
KINDS = ("connections", "listeners")
INTENT = "phobos-batch:"


def topics_for(prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Kind -> topic name for a topic prefix."""
    return {kind: f"{prefix}.{kind}" for kind in KINDS}


def _kafka_conf(brokers: str, extra: dict[str, str] | None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": brokers}
    for name, value in os.environ.items():
        if name.startswith("PHOBOS_KAFKA_") and value:
            conf[name[len("PHOBOS_KAFKA_"):].lower().replace("_", ".")] = value
    conf.update(extra or {})
    return conf


# -- topics -------------------------------------------------------------------------
def init_topics(brokers: str, prefix: str = DEFAULT_PREFIX, partitions: int = 6, replication: int = 1,
                retention_hours: float = 72, conf: dict[str, str] | None = None,
                timeout_s: float = 30.0) -> list[str]:
    """Create the topics of ``prefix`` that are missing; returns what it did.

    Idempotent: existing topics are left as they are (a partition count lower
    than asked for is reported, never changed - that would move hosts' keys).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_kafka_conf(brokers, conf))
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as err:
        raise StoreError(f"Kafka {brokers} is not reachable: {err}") from None
    changes = []
    new = []
    for topic in topics_for(prefix).values():
        if topic in existing:
            have = len(existing[topic].partitions)
            note = "" if have >= partitions else f" (has {have} partitions, fewer than {partitions}; left as is)"
            changes.append(f"topic {topic} exists{note}")
            continue
        new.append(NewTopic(topic, num_partitions=partitions, replication_factor=replication, config={
            "retention.ms": str(int(retention_hours * 3600 * 1000)),
            "cleanup.policy": "delete",
            "max.message.bytes": str(2 << 20),
        }))
    if new:
        for topic, future in admin.create_topics(new, request_timeout=timeout_s).items():
            try:
                future.result()
                changes.append(f"created topic {topic} ({partitions} partitions, retention {retention_hours:g} h)")
            except KafkaException as err:
                if err.args and getattr(err.args[0], "code", lambda: None)() == 36:  # TOPIC_ALREADY_EXISTS (race)
                    changes.append(f"topic {topic} exists")
                else:
                    raise StoreError(f"cannot create topic {topic}: {err}") from None
    return changes


# -- server mode: Kafka engine tables -------------------------------------------------
def migrate_kafka(store: Any, brokers: str, prefix: str = DEFAULT_PREFIX, group: str = DEFAULT_ENGINE_GROUP,
                  topic_connections: str | None = None, topic_listeners: str | None = None,
                  ttl_days: int = 30, directory: Path = KAFKA_SQL_DIR, allow_embedded: bool = False) -> list[str]:
    """Apply the Kafka-engine set (``sql/kafka/``) for ``prefix``'s topics to ``store``; returns what changed.

    The store's migration runner applies it (``api.storage.migrations.apply_kafka_schema``):
    run again with the same settings it changes nothing; with other
    brokers, topics or group the queues and views are made anew.
    """
    topics = topics_for(prefix)
    topics.update({k: t for k, t in (("connections", topic_connections), ("listeners", topic_listeners)) if t})
    return apply_kafka_schema(store, brokers=brokers, group=group, topics=topics, ttl_days=ttl_days,
                              directory=directory, allow_embedded=allow_embedded)


def kafka_statements(db: str, brokers: str, prefix: str = DEFAULT_PREFIX, group: str = DEFAULT_ENGINE_GROUP,
                     ttl_days: int = 30, directory: Path = KAFKA_SQL_DIR) -> list[str]:
    """The statements ``migrate_kafka`` would run on an empty store (for ``--print-ddl``)."""
    return kafka_schema_statements(db, brokers=brokers, group=group, topics=topics_for(prefix), ttl_days=ttl_days,
                                   directory=directory)


# -- validation ----------------------------------------------------------------------
_ARROW_IN = {"str": pa.string(), "ip": pa.string(), "ts": pa.string(), "enum": pa.string()}


def _schema_in(kind: str) -> pa.Schema:
    return pa.schema([
        (f.name, (pa.uint64() if f.max > 2**63 else pa.int64()) if f.kind == "uint" else _ARROW_IN[f.kind])
        for f in RECORD_FIELDS[kind]
    ])


_SCHEMAS = {kind: _schema_in(kind) for kind in KINDS}


def fast_table(kind: str, data: bytes, lines: int) -> pa.Table | None:
    """``data`` (``lines`` JSON lines) as the normalised Arrow table of
    ``api.ingest.records_to_arrow`` when *every* record passes the contract in
    the tracer's canonical form; None when any record needs the exact path
    (then ``tracer.records.validate`` decides record by record)."""
    import pyarrow.compute as pc
    import pyarrow.json as pj

    try:
        tbl = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(block_size=4 << 20),
            parse_options=pj.ParseOptions(explicit_schema=_SCHEMAS[kind], unexpected_field_behavior="error"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if tbl.num_rows != lines:
        return None
    out = {}
    for f in RECORD_FIELDS[kind]:
        col = tbl.column(f.name)
        if col.null_count:
            return None  # missing field or null
        if f.kind == "uint":
            lo_hi = pc.min_max(col).as_py()
            if lo_hi["min"] < 0 or lo_hi["max"] > f.max:
                return None
            if f.name == "v" and not lo_hi["min"] == lo_hi["max"] == VERSION:
                return None
            out[f.name] = col.cast(pa.uint64())
        elif f.kind == "str":
            if len(col) and pc.max(pc.utf8_length(col)).as_py() > 4096:
                return None
            out[f.name] = col
        elif f.kind == "enum":
            enc = col.combine_chunks().dictionary_encode()
            if not set(enc.dictionary.to_pylist()) <= set(f.choices):
                return None
            out[f.name] = col
        elif f.kind == "ts":
            # One interval's records share their ts: parse each distinct value once.
            enc = col.combine_chunks().dictionary_encode()
            parsed = pc.strptime(enc.dictionary, format="%Y-%m-%dT%H:%M:%SZ", unit="s", error_is_null=True)
            if parsed.null_count:
                return None
            secs = parsed.cast(pa.int64())
            lo_hi = pc.min_max(secs).as_py()
            if lo_hi["min"] < 0 or lo_hi["max"] > U32:
                return None
            out[f.name] = secs.take(enc.indices)
        elif f.kind == "ip":
            enc = col.combine_chunks().dictionary_encode()
            try:
                normal = pa.array([normalize_ip(v) for v in enc.dictionary.to_pylist()], pa.string())
            except ValueError:
                return None
            out[f.name] = normal.take(enc.indices)
    return pa.table(out)


# -- consumer mode -------------------------------------------------------------------
@dataclass
class _Batch:
    first: int
    last: int = -1
    messages: list = field(default_factory=list)  # (offset, value, lines)
    records: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Partition:
    topic: str
    partition: int
    kind: str
    pinned_end: int | None = None  # from an intent left by an interrupted consumer
    batch: _Batch | None = None


class KafkaIngest:
    """Consume record topics into a store in deterministic, deduplicated batches.

    Parameters
    ----------
    store : api.storage.Store (migrated).
    brokers : bootstrap servers, ``host:9092[,host2:9092]``.
    topics : topic -> record kind.
    group : consumer group; offsets are committed per partition after each insert.
    batch_records, batch_interval_s : a partition's batch is inserted when it
        holds this many records or is this old (whichever first).
    max_message_bytes : larger messages go to dead_letters unread.
    conf : extra librdkafka properties (TLS, SASL ...).
    """

    def __init__(self, store: Any, brokers: str, topics: dict[str, str], group: str = DEFAULT_GROUP,
                 batch_records: int = 100_000, batch_interval_s: float = 1.0,
                 max_message_bytes: int = 1 << 20, conf: dict[str, str] | None = None,
                 on_batch: Callable[[dict[str, Any]], None] | None = None,
                 after_insert: Callable[[str], None] | None = None) -> None:
        from confluent_kafka import Consumer

        unknown = set(topics.values()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown record kind(s) {', '.join(sorted(unknown))}")
        self.store = store
        self.topics = dict(topics)
        self.group = group
        self.batch_records = batch_records
        self.batch_interval_s = batch_interval_s
        self.max_message_bytes = max_message_bytes
        self.on_batch = on_batch
        self.after_insert = after_insert  # called between insert and commit (crash tests)
        cfg = _kafka_conf(brokers, conf)
        cfg.update({
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 8 << 20,
            "message.max.bytes": 16 << 20,
            "receive.message.max.bytes": 80 << 20,
            "queued.max.messages.kbytes": 262_144,
            "log_level": 3,
        })
        cfg.update(conf or {})
        self.consumer = Consumer(cfg)
        self.parts: dict[tuple[str, int], _Partition] = {}
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.counts = {"messages": 0, "records": 0, "accepted": 0, "rejected": 0, "batches": 0,
                       "replayed_batches": 0, "commit_errors": 0}
        self._rate = (time.monotonic(), 0)
        self.rows_per_s = 0.0
        self.last_batch_at: float | None = None
        self.assigned = False
        self.consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)

    # -- rebalances: forget what is not ours any more ----------------------------
    def _on_assign(self, consumer: Any, partitions: list) -> None:
        self.assigned = bool(partitions) or self.assigned
        for tp in partitions:
            self.parts.pop((tp.topic, tp.partition), None)
        log.info("assigned %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing")

    def _on_revoke(self, consumer: Any, partitions: list) -> None:
        # Buffered, uncommitted messages are simply re-read by the next owner,
        # which also honours an intent we may have committed.
        for tp in partitions:
            self.parts.pop((tp.topic, tp.partition), None)

    def _partition(self, topic: str, partition: int) -> _Partition:
        key = (topic, partition)
        part = self.parts.get(key)
        if part is None:
            from confluent_kafka import TopicPartition

            part = _Partition(topic, partition, self.topics[topic])
            committed = self.consumer.committed([TopicPartition(topic, partition)], timeout=30)[0]
            meta = committed.metadata or ""
            if meta.startswith(INTENT):
                first, _, last = meta[len(INTENT):].partition("-")
                if int(first) == committed.offset:
                    part.pinned_end = int(last)
                    log.info("%s/%d: replaying interrupted batch %s-%s", topic, partition, first, last)
            self.parts[key] = part
        return part

    # -- the loop -------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.2, max_messages: int = 10_000) -> int:
        """Read what is there, insert the batches that are due; returns messages read."""
        messages = self.consumer.consume(max_messages, timeout_s)
        for msg in messages:
            if msg.error():
                log.warning("kafka: %s", msg.error().str())
                continue
            part = self._partition(msg.topic(), msg.partition())
            offset = msg.offset()
            if part.batch is None:
                part.batch = _Batch(first=offset)
            batch = part.batch
            value = (msg.value() or b"").rstrip(b"\n")
            lines = value.count(b"\n") + 1 if len(value) <= self.max_message_bytes else 1
            batch.messages.append((offset, value, lines))
            batch.last = offset
            batch.records += lines
            self.counts["messages"] += 1
            if part.pinned_end is not None and offset >= part.pinned_end:
                self._flush(part)
            elif part.pinned_end is None and batch.records >= self.batch_records:
                self._flush(part)
        now = time.monotonic()
        for part in list(self.parts.values()):
            b = part.batch
            if b and part.pinned_end is None and now - b.started >= self.batch_interval_s:
                self._flush(part)
        return len(messages)

    def run(self, duration_s: float = 0.0, idle_exit_s: float = 0.0, report_s: float = 10.0,
            report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Consume until ``stop`` is set (or ``duration_s``, or ``idle_exit_s`` without messages)."""
        start = time.monotonic()
        last_msg = start
        last_report = start
        while not self.stop.is_set():
            now = time.monotonic()
            if duration_s and now - start >= duration_s:
                break
            if self.poll():
                last_msg = time.monotonic()
            elif not self.assigned:
                last_msg = time.monotonic()  # still joining the group: not idle yet
            elif idle_exit_s and now - last_msg >= idle_exit_s and not any(p.batch for p in self.parts.values()):
                break
            if report and now - last_report >= report_s:
                last_report = now
                report(self.stats())
        self.flush_all()
        return self.stats()

    def flush_all(self) -> None:
        """Insert and commit every open batch (clean shutdown)."""
        for part in list(self.parts.values()):
            if part.batch and part.pinned_end is None:
                self._flush(part)

    def close(self) -> None:
        try:
            self.flush_all()
        finally:
            self.consumer.close()

    # -- one batch ---------------------------------------------------------------------
    def _commit(self, part: _Partition, offset: int, metadata: str = "") -> bool:
        """Commit synchronously, retrying briefly; False when the partition is
        no longer ours or the group is unreachable."""
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(part.topic, part.partition, offset, metadata)
        for attempt in range(5):
            try:
                self.consumer.commit(offsets=[tp], asynchronous=False)
                return True
            except KafkaException as err:
                self.counts["commit_errors"] += 1
                log.warning("commit of %s/%d@%d failed (%s)", part.topic, part.partition, offset, err)
                if self.stop.is_set() and attempt >= 1:
                    break
                time.sleep(0.2 * (attempt + 1))
        return False

    def _flush(self, part: _Partition) -> None:
        batch = part.batch
        if batch is None:
            return
        if part.pinned_end is not None:
            # The interrupted batch ends at pinned_end exactly; later messages start the next.
            keep = [m for m in batch.messages if m[0] <= part.pinned_end]
            rest = [m for m in batch.messages if m[0] > part.pinned_end]
            batch.messages, batch.last = keep, part.pinned_end
            part.pinned_end = None
            self.counts["replayed_batches"] += 1
        else:
            rest = []
            if not self._commit(part, batch.first, f"{INTENT}{batch.first}-{batch.last}"):
                # Without a recorded intent the insert could not be replayed
                # exactly: leave the batch unread and let the partition's
                # owner (us after a rejoin, or another consumer) read it again.
                self._abandon(part, batch.first)
                return
        part.batch = None
        batch_id = f"{part.topic}/{part.partition}/{batch.first}-{batch.last}"
        result = self._insert(part.kind, batch_id, part.topic, part.partition, batch.messages)
        if self.after_insert:
            self.after_insert(batch_id)
        if not self._commit(part, batch.last + 1):
            # Inserted but not committed: whoever reads the partition next
            # finds the intent and replays this batch with the same token.
            self._abandon(part, batch.first)
            return
        self.counts["batches"] += 1
        self.last_batch_at = time.time()
        if self.on_batch:
            self.on_batch({"batch_id": batch_id, **result})
        if rest:
            part.batch = _Batch(first=rest[0][0], last=rest[-1][0], messages=rest,
                                records=sum(m[2] for m in rest))

    def _abandon(self, part: _Partition, offset: int) -> None:
        """Forget the partition's buffered messages and read again from ``offset``."""
        from confluent_kafka import TopicPartition

        self.parts.pop((part.topic, part.partition), None)
        try:
            self.consumer.seek(TopicPartition(part.topic, part.partition, offset))
        except Exception as err:  # not assigned any more: the new owner reads it
            log.info("%s/%d: not re-reading from %d here (%s)", part.topic, part.partition, offset, err)

    def _insert(self, kind: str, batch_id: str, topic: str, partition: int,
                messages: list[tuple[int, bytes, int]]) -> dict[str, Any]:
        dead: list[dict[str, Any]] = []
        now = int(time.time())

        def dead_letter(offset: int, line: int | None, reason: str, raw: bytes) -> None:
            where = f"kafka:{topic}/{partition}@{offset}" + (f" line {line}" if line is not None else "")
            dead.append(dead_letter_row(kind, where, reason, raw, now, unit="message"))

        # Fast path: the batch's messages as one JSON-lines document, checked
        # column by column; any doubt sends the whole batch to the exact path.
        table = None
        exact = any(len(v) > self.max_message_bytes or not v for _, v, _ in messages)
        if messages and not exact:
            table = fast_table(kind, b"\n".join(v for _, v, _ in messages) + b"\n", sum(n for _, _, n in messages))
            exact = table is None
        if exact:
            records, where = [], []
            for offset, value, _ in messages:
                if len(value) > self.max_message_bytes:
                    dead_letter(offset, None, f"message is {len(value)} bytes, larger than the "
                                f"{self.max_message_bytes} bytes allowed", value)
                    continue
                if not value.strip():
                    dead_letter(offset, None, "empty message", value)
                    continue
                for n, line in enumerate(value.split(b"\n"), 1):
                    if not line.strip():
                        continue
                    record = decode_record(line)
                    if isinstance(record, Undecodable):
                        dead_letter(offset, n, record.reason, line)
                    else:
                        records.append(record)
                        where.append((offset, n, line))
            good, bad = validate_batch(kind, records)
            for rejection in bad:
                offset, n, line = where[rejection.index]
                dead_letter(offset, n, rejection.message, line)
            table = records_to_arrow(kind, good) if good else None
        rejected = 0
        accepted = table.num_rows if table is not None else 0
        if accepted:
            self.store.insert_arrow(kind, table, dedup_token=f"{kind}:{batch_id}")
        if dead:
            rejected = len(dead)
            self.store.insert_rows("dead_letters", dead, dedup_token=f"dead:{batch_id}")
        self.counts["records"] += accepted + rejected
        self.counts["accepted"] += accepted
        self.counts["rejected"] += rejected
        STATS.add(IngestResult(kind, accepted=accepted,
                               rejected=[Rejection(i, None, d["reason"]) for i, d in enumerate(dead)]))
        return {"kind": kind, "accepted": accepted, "rejected": rejected}

    # -- metrics ------------------------------------------------------------------------
    def lag(self) -> dict[str, int]:
        """Messages not yet consumed per ``topic/partition`` (high watermark - position)."""
        out = {}
        try:
            assigned = self.consumer.assignment()
            positions = self.consumer.position(assigned) if assigned else []
        except Exception:
            return out
        for tp in positions:
            try:
                low, high = self.consumer.get_watermark_offsets(tp, timeout=1, cached=False)
            except Exception:
                continue
            pos = tp.offset if tp.offset >= 0 else low
            out[f"{tp.topic}/{tp.partition}"] = max(0, high - pos)
        return out

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        t0, n0 = self._rate
        if now - t0 >= 1.0:
            self.rows_per_s = (self.counts["accepted"] - n0) / (now - t0)
            self._rate = (now, self.counts["accepted"])
        lag = self.lag()
        return {**self.counts, "rows_per_s": round(self.rows_per_s, 1), "lag_messages": sum(lag.values()),
                "lag": lag, "uptime_s": round(now - self.started, 1)}


def prometheus_text(stats: dict[str, Any]) -> str:
    lines = [
        "# HELP phobos_ingest_records_total Records read from Kafka by outcome.",
        "# TYPE phobos_ingest_records_total counter",
        f'phobos_ingest_records_total{{outcome="accepted"}} {stats["accepted"]}',
        f'phobos_ingest_records_total{{outcome="rejected"}} {stats["rejected"]}',
        "# TYPE phobos_ingest_batches_total counter",
        f"phobos_ingest_batches_total {stats['batches']}",
        "# TYPE phobos_ingest_rows_per_second gauge",
        f"phobos_ingest_rows_per_second {stats['rows_per_s']}",
        "# HELP phobos_ingest_lag_messages Messages behind the partition's high watermark.",
        "# TYPE phobos_ingest_lag_messages gauge",
    ]
    for tp, lag in sorted(stats["lag"].items()):
        topic, _, partition = tp.rpartition("/")
        lines.append(f'phobos_ingest_lag_messages{{topic="{topic}",partition="{partition}"}} {lag}')
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------------------
def _env(name: str, default: Any) -> Any:
    return os.environ.get(name) or default


def _add_kafka_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka", default=_env("PHOBOS_KAFKA_BROKERS", None), required=not os.environ.get("PHOBOS_KAFKA_BROKERS"),
                        metavar="BROKERS", help="bootstrap servers, host:9092[,host:9092] [PHOBOS_KAFKA_BROKERS]")
    parser.add_argument("--topic-prefix", default=_env("PHOBOS_TOPIC_PREFIX", DEFAULT_PREFIX),
                        help="topics are PREFIX.connections and PREFIX.listeners [PHOBOS_TOPIC_PREFIX, "
                        "default %(default)s]")
    parser.add_argument("-X", dest="kafka_conf", action="append", default=[], metavar="KEY=VALUE",
                        help="librdkafka property, e.g. -X security.protocol=SASL_SSL -X sasl.mechanism=PLAIN "
                        "(repeatable; PHOBOS_KAFKA_SASL_PASSWORD etc. are read too)")


def _conf(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"-X {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def _topics(args: argparse.Namespace) -> dict[str, str]:
    if not args.topic:
        return {topic: kind for kind, topic in topics_for(args.topic_prefix).items()}
    out = {}
    for item in args.topic:
        kind, sep, topic = item.partition("=")
        if not sep:
            topic = item
            kind = next((k for k in KINDS if item.endswith(k)), "")
        if kind not in KINDS:
            raise SystemExit(f"--topic {item!r}: say which records it carries, e.g. connections={item}")
        out[topic] = kind
    return out


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``phobos ingest`` (consume Kafka into a store)."""
    parser.description = "Consume Tracer records from Kafka into a store: validated, deduplicated, at-least-once."
    parser.epilog = (
        "examples:\n"
        "  phobos ingest --kafka 127.0.0.1:9092 --store chdb://./data/phobos\n"
        "  phobos ingest --kafka k1:9092,k2:9092 --topic connections=prod.conns --topic listeners=prod.lis \\\n"
        "      --store clickhouse://phobos:secret@ch1:9000/phobos -X security.protocol=SSL\n"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_kafka_common(parser)
    parser.add_argument("--topic", action="append", default=[], metavar="[KIND=]TOPIC",
                        help="topic to consume (repeatable); KIND is connections or listeners, taken from the "
                        "name's ending when left out (default: the prefix's two topics)")
    parser.add_argument("--group", default=_env("PHOBOS_KAFKA_GROUP", DEFAULT_GROUP),
                        help="consumer group [PHOBOS_KAFKA_GROUP, default %(default)s]")
    parser.add_argument("--store", default=_env("PHOBOS_STORE", DEFAULT_STORE_URL),
                        help="store URL [PHOBOS_STORE, default %(default)s]")
    parser.add_argument("--batch-records", type=int, default=int(_env("PHOBOS_BATCH_RECORDS", 100_000)),
                        help="records per partition batch [default %(default)s]")
    parser.add_argument("--batch-interval", type=float, default=float(_env("PHOBOS_BATCH_INTERVAL", 1.0)),
                        help="seconds before a partition's partial batch is inserted [default %(default)s]")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20,
                        help="larger messages go to dead_letters [default %(default)s]")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run on)")
    parser.add_argument("--idle-exit", type=float, default=0.0,
                        help="stop after this many seconds without messages (0: never)")
    parser.add_argument("--report", type=float, default=10.0,
                        help="seconds between status lines on stderr (lag, rows/s, rejected) [default %(default)s]")
    parser.add_argument("--metrics-port", type=int, default=int(_env("PHOBOS_METRICS_PORT", 0)),
                        help="serve Prometheus /metrics on 127.0.0.1:PORT (0: off)")
    return parser


def _serve_metrics(port: int, ingest: KafkaIngest) -> Any:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cache = {"text": prometheus_text({**ingest.counts, "rows_per_s": 0.0, "lag": {}})}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = cache["text"].encode()
            self.send_response(200 if self.path.startswith("/metrics") else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cache


def run(args: argparse.Namespace) -> int:
    """``phobos ingest``: consume until SIGINT/SIGTERM (or --duration / --idle-exit)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    topics = _topics(args)
    with open_store(args.store, role="phobos ingest") as store:
        store.migrate()
        ingest = KafkaIngest(store, args.kafka, topics, group=args.group, batch_records=args.batch_records,
                             batch_interval_s=args.batch_interval, max_message_bytes=args.max_message_bytes,
                             conf=_conf(args.kafka_conf))
        metrics = _serve_metrics(args.metrics_port, ingest) if args.metrics_port else None

        def report(stats: dict[str, Any]) -> None:
            if metrics:
                metrics[1]["text"] = prometheus_text(stats)
            print("phobos-ingest " + json.dumps({k: v for k, v in stats.items() if k != "lag"}), file=sys.stderr,
                  flush=True)

        previous = {sig: signal.signal(sig, lambda *_: ingest.stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(f"phobos ingest: {', '.join(f'{t} ({k})' for t, k in topics.items())} from {args.kafka} "
                  f"into {store.url.redacted()}, group {args.group}", file=sys.stderr, flush=True)
            stats = ingest.run(duration_s=args.duration, idle_exit_s=args.idle_exit, report_s=args.report,
                               report=report)
            report(stats)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            ingest.close()
            if metrics:
                metrics[0].shutdown()
    return 0


def configure_kafka_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``phobos kafka init``: create the topics (idempotent)."""
    sub = parser.add_subparsers(dest="kafka_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("init", help="create the record topics if missing (idempotent)")
    _add_kafka_common(p)
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic [default %(default)s]")
    p.add_argument("--replication", type=int, default=1, help="replication factor [default %(default)s]")
    p.add_argument("--retention-hours", type=float, default=72, help="topic retention [default %(default)s]")
    return parser


def run_kafka(args: argparse.Namespace) -> int:
    for change in init_topics(args.kafka, args.topic_prefix, partitions=args.partitions,
                              replication=args.replication, retention_hours=args.retention_hours,
                              conf=_conf(args.kafka_conf)):
        print(change)
    return 0


def configure_migrate_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Extra flags of ``phobos migrate`` for the Kafka-engine set."""
    parser.add_argument("--kafka", default=_env("PHOBOS_KAFKA_BROKERS", None), metavar="BROKERS",
                        help="also create Kafka engine queues and views so that ClickHouse consumes BROKERS "
                        "itself (server mode) [PHOBOS_KAFKA_BROKERS]")
    parser.add_argument("--topic-prefix", default=_env("PHOBOS_TOPIC_PREFIX", DEFAULT_PREFIX),
                        help="with --kafka: topics PREFIX.connections / PREFIX.listeners [default %(default)s]")
    parser.add_argument("--kafka-group", default=_env("PHOBOS_KAFKA_ENGINE_GROUP", DEFAULT_ENGINE_GROUP),
                        help="with --kafka: ClickHouse's consumer group [default %(default)s]")
    return parser


def migrate_from_args(store: Any, args: argparse.Namespace) -> list[str]:
    """Apply the Kafka set when ``phobos migrate`` was given ``--kafka``."""
    if not getattr(args, "kafka", None):
        return []
    return migrate_kafka(store, args.kafka, prefix=args.topic_prefix, group=args.kafka_group,
                         ttl_days=getattr(args, "ttl_days", None) or 30)


def main(argv: list[str] | None = None) -> int:
    """``python -m api.kafka_ingest ingest|kafka|migrate ...`` (same as the phobos subcommands)."""
    parser = argparse.ArgumentParser(prog="python -m api.kafka_ingest")
    sub = parser.add_subparsers(dest="command", required=True)
    configure_parser(sub.add_parser("ingest", help="consume Kafka into a store")).set_defaults(func=run)
    configure_kafka_parser(sub.add_parser("kafka", help="topic set-up")).set_defaults(func=run_kafka)
    p = sub.add_parser("migrate", help="core schema plus the Kafka engine set")
    p.add_argument("--store", default=_env("PHOBOS_STORE", DEFAULT_STORE_URL))
    configure_migrate_parser(p)

    def _migrate(args: argparse.Namespace) -> int:
        with open_store(args.store, role="phobos migrate") as store:
            for change in store.migrate() + migrate_from_args(store, args):
                print(change)
        return 0

    p.set_defaults(func=_migrate)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StoreError as err:
        print(f"phobos {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
