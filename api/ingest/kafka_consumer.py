"""Consumer mode: Kafka -> the store, exactly once for what the users see (``phobos ingest``).

How the embedded chDB store ingests from Kafka (``phobos serve --kafka``
runs it in the serving process), and an option for servers.  Messages are
gathered per partition into batches of up to ``batch_records`` records or
``batch_interval_s`` seconds, checked against the record contract, inserted,
and only then is the partition's offset committed (at-least-once).  A batch
is the offset range ``first..last`` of one partition and its insert carries
the token ``KIND:TOPIC/PARTITION/FIRST-LAST``; every table and rollup keeps a
deduplication window, so a batch inserted twice is stored once.  For that
the replayed batch must have the *same* boundaries: before inserting, the
consumer commits the batch's *start* offset with the metadata
``phobos-batch:FIRST-LAST`` (an intent), and after the insert the offset
``LAST+1``.  A consumer that starts (after a crash, SIGKILL, or a rebalance)
on a partition whose committed metadata is an intent re-reads exactly
``FIRST..LAST`` as its first batch.  Two synchronous commits per batch are
the price; batches are large.

Unreadable input is never dropped silently: a message larger than
``max_message_bytes``, a line that is not JSON, or a record the contract
refuses goes to ``dead_letters`` with the reason and its source
``kafka:TOPIC/PARTITION@OFFSET`` (line N), and the pipeline keeps going.
A batch in the form the tracer writes is checked column by column
(``contract.fast_table``); any other, record by record (``contract.check_records``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from api.ingest.batches import STATS, IngestResult
from api.ingest.contract import check_records, fast_table, records_to_arrow
from api.ingest.dead_letters import dead_letter_row
from api.ingest.decode import Undecodable, decode_record
from api.ingest.kafka_topics import DEFAULT_GROUP, KINDS, kafka_conf
from api.storage import Store
from tracer.records import Rejection

__all__ = ["KafkaIngest"]

log = logging.getLogger("phobos.kafka_ingest")

INTENT = "phobos-batch:"


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
    store : Store (migrated).
    brokers : bootstrap servers, ``host:9092[,host2:9092]``.
    topics : topic -> record kind.
    group : consumer group; offsets are committed per partition after each insert.
    batch_records, batch_interval_s : a partition's batch is inserted when it
        holds this many records or is this old (whichever first).
    max_message_bytes : larger messages go to dead_letters unread.
    conf : extra librdkafka properties (TLS, SASL ...).
    """

    def __init__(self, store: Store, brokers: str, topics: dict[str, str], group: str = DEFAULT_GROUP,
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
        cfg = kafka_conf(brokers, conf)
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
            good, bad = check_records(kind, records)
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
