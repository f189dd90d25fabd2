"""Kafka sink: the tracer's records to Kafka, with an on-disk spool for outages.

``--sink kafka://BROKER[,BROKER...][/PREFIX][?option=value&...]``; importing
this module registers the scheme with ``tracer.sinks.make_sink`` (the agent
does), and confluent-kafka is loaded only when a sink opens.

Messages: one message per record kind and host holds up to
``records_per_message`` records as JSON lines (``JSONEachRow``: one object
per line, lines separated by ``\\n``), on two topics ``PREFIX.connections``
and ``PREFIX.listeners`` (default prefix ``phobos``).  The key is the host
name, so one host's records stay in one partition, in order.  ClickHouse's
Kafka engine reads such messages with ``kafka_format = 'JSONEachRow'`` (several
rows per message) and ``phobos ingest`` splits the lines.

Producer: confluent-kafka (librdkafka), idempotent (``enable.idempotence``:
broker-side retries never duplicate or reorder a partition's messages),
``compression.type`` (default ``lz4``: cheap on both ends), batching by ``linger.ms``.  Delivery
reports are counted: ``sent`` records, ``errors`` failed deliveries.

Outages: when every broker is down (librdkafka's ``_ALL_BROKERS_DOWN``)
everything sent from then on is written to a bounded on-disk spool
(``tracer.spool``); what librdkafka already holds stays there and is retried
by librdkafka itself (``message.timeout.ms`` = 0: no expiry), so the
idempotent producer can still deduplicate it.  While the spool is not empty
the broker is probed at most every ``probe_s``; once it answers, the spool is
replayed in order and a spooled message is deleted only after its delivery
report.  The spool's size is capped (``spool_mb``); beyond it the oldest
messages are dropped, counted in ``dropped`` and logged - never silently.
``flush`` delivers what it can in the time given; ``close`` (clean
shutdown) writes whatever is still undelivered to the spool, which the next
start replays.

Options (URL query or keyword; every ``PHOBOS_KAFKA_*`` environment variable
is passed to librdkafka as well, e.g. ``PHOBOS_KAFKA_SASL_PASSWORD`` ->
``sasl.password``, so secrets need not be in the URL):

- ``spool`` spool directory (default ``$PHOBOS_SPOOL_DIR`` or
  ``/var/lib/phobos/spool``), ``spool_mb`` size limit (default 256);
- ``records_per_message`` (default 1000), ``compression`` (default lz4),
  ``probe_s`` (default 2), ``client_id``;
- any librdkafka property with a dot, passed through unchanged: TLS
  (``security.protocol=SSL``, ``ssl.ca.location``, ``ssl.certificate.location``,
  ``ssl.key.location``, ``ssl.key.password``) and SASL (``sasl.mechanism``,
  ``sasl.username``, ``sasl.password``), ``linger.ms``, ``message.timeout.ms`` ...

Caveat: closing while the brokers are down takes back requests that were in
flight; if a broker had written one without acknowledging it, the replay
after the next start writes it again (the consumer then counts it twice).
That is the only duplication path; a crash of the tracer loses what
librdkafka held in memory (at most the messages queued before the outage
was noticed), never what is in the spool.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

from tracer.records import RECORD_FIELDS
from tracer.settings import TRACER_SETTINGS, librdkafka_properties
from tracer.sinks import Sink, SinkError, register_sink
from tracer.spool import Spool

__all__ = ["KafkaSink", "parse_kafka_url", "DEFAULT_PREFIX", "KINDS", "topics_for"]

log = logging.getLogger("phobos.tracer.kafka")

DEFAULT_PREFIX = "phobos"
#: One topic per record kind.
KINDS = tuple(RECORD_FIELDS)


def topics_for(prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Kind -> topic name for a topic prefix: what the sink writes and ``phobos ingest`` reads."""
    return {kind: f"{prefix}.{kind}" for kind in KINDS}

_MAX_MESSAGE_BYTES = 900_000  # below the broker's default 1 MB message.max.bytes

# One encoder for every record: json.dumps with options builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

_OWN_OPTIONS = {"spool", "spool_mb", "records_per_message", "compression", "probe_s", "client_id", "topic_prefix"}


def parse_kafka_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``kafka://b1:9092,b2:9092/prefix?opt=v`` -> (brokers, prefix, options)."""
    if not url.startswith("kafka://"):
        raise SinkError(f"not a kafka URL: {url!r}")
    rest = url[len("kafka://"):]
    rest, _, query = rest.partition("?")
    brokers, _, path = rest.partition("/")
    if not brokers:
        raise SinkError(f"{url!r} names no broker; use kafka://HOST:9092[/PREFIX]")
    prefix = unquote(path.strip("/")) or DEFAULT_PREFIX
    return brokers, prefix, dict(parse_qsl(query, keep_blank_values=True))


def _default_spool_dir(prefix: str) -> str:
    base = TRACER_SETTINGS.value("SPOOL_DIR")
    path = os.path.join(base, prefix)
    try:
        os.makedirs(path, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    fallback = os.path.join(tempfile.gettempdir(), f"phobos-spool-{os.getuid()}", prefix)
    log.warning("spool directory %s is not writable; using %s (set ?spool= or PHOBOS_SPOOL_DIR)", path, fallback)
    return fallback


class KafkaSink(Sink):
    """Produce records to Kafka; spool to disk while the brokers are away.

    Parameters
    ----------
    url : ``kafka://BROKERS[/PREFIX][?options]``, see the module docstring.
    host : key of every message (the reporting host).
    options : the URL's options as keywords (they override the URL); unknown
        ones without a dot are refused, ones with a dot go to librdkafka.
    """

    scheme = "kafka"

    def __init__(self, url: str, host: str = "", token: str | None = None, max_queue: int = 100_000,
                 **options: Any) -> None:
        super().__init__()
        from confluent_kafka import Producer  # noqa: PLC0415 - only for kafka sinks

        brokers, prefix, url_opts = parse_kafka_url(url)
        opts: dict[str, Any] = {**url_opts, **{k: v for k, v in options.items() if v is not None}}
        opts.pop("stream", None)
        prefix = str(opts.pop("topic_prefix", prefix))
        unknown = [k for k in opts if k not in _OWN_OPTIONS and "." not in k]
        if unknown:
            raise SinkError(f"unknown kafka sink option(s) {', '.join(sorted(unknown))}")
        self.brokers = brokers
        self.topics = topics_for(prefix)
        self.key = (host or os.uname().nodename).encode()
        self.records_per_message = int(opts.pop("records_per_message", 1000))
        self.probe_s = float(opts.pop("probe_s", 2.0))
        spool_dir = opts.pop("spool", None) or _default_spool_dir(prefix)
        spool_mb = float(opts.pop("spool_mb", 256))
        conf: dict[str, Any] = {
            "bootstrap.servers": brokers,
            "client.id": opts.pop("client_id", f"phobos-tracer-{self.key.decode()}"),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": opts.pop("compression", "lz4"),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "message.max.bytes": 1_000_000,
            "message.timeout.ms": 0,  # librdkafka retries until close(); see the module docstring
            "queue.buffering.max.kbytes": 262_144,
            "error_cb": self._on_error,
            "log_level": 3,
        }
        conf.update(librdkafka_properties())  # PHOBOS_KAFKA_SASL_PASSWORD -> sasl.password ...
        conf.update(opts)  # the remaining options all have a dot: librdkafka's own
        try:
            self.producer = Producer(conf)
        except Exception as err:
            raise SinkError(f"cannot create Kafka producer for {brokers}: {err}") from None
        self.spool = Spool(spool_dir, max_bytes=int(spool_mb * (1 << 20)))
        self.online = len(self.spool) == 0
        self._last_probe = 0.0
        self._in_flight = 0  # records handed to librdkafka, not yet reported
        self._replay_in_flight = 0  # spooled messages handed to librdkafka
        self.delivered_messages = 0
        self.failed_messages = 0
        self.spooled_records = 0
        self.replayed_records = 0
        self.dropped = self.spool.dropped_records
        if len(self.spool):
            log.warning("kafka sink: %d records from an earlier run wait in the spool %s; replaying them",
                        self.spool.pending_records, spool_dir)

    # -- librdkafka callbacks (run inside poll/flush in this thread) -----------
    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError  # noqa: PLC0415

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.online:
                log.warning("kafka sink: all brokers down (%s); spooling to %s", err.str(), self.spool.dir)
            self.online = False
        else:
            log.debug("kafka: %s", err.str())

    def _on_delivery(self, err: Any, msg: Any) -> None:
        records = msg.value().count(b"\n") + 1
        self._in_flight -= records
        if err is None:
            self.delivered_messages += 1
            self.sent += records
            return
        self.failed_messages += 1
        self.errors += 1
        self.online = False
        # Taken back at close (or timed out, if message.timeout.ms was set):
        # keep it on disk for the replay.
        self.spool.append(msg.topic(), msg.key(), msg.value(), records)
        self.spooled_records += records

    def _on_replayed(self, seq: int, records: int):
        def report(err: Any, msg: Any) -> None:
            self._replay_in_flight -= 1
            if err is None:
                self.spool.ack(seq, records)
                self.delivered_messages += 1
                self.sent += records
                self.replayed_records += records
            else:
                self.failed_messages += 1
                self.errors += 1
                self.online = False
                self.spool.rewind()  # the spool still holds it; acked ones are skipped

        return report

    # -- sending -------------------------------------------------------------------
    def _messages(self, kind: str, records: list[dict[str, Any]]):
        lines: list[bytes] = []
        size = 0
        for rec in records:
            line = _ENCODE(rec).encode()
            if lines and (len(lines) >= self.records_per_message or size + len(line) > _MAX_MESSAGE_BYTES):
                yield b"\n".join(lines), len(lines)
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        if lines:
            yield b"\n".join(lines), len(lines)

    def send(self, connections: list[dict[str, Any]], listeners: list[dict[str, Any]]) -> None:
        self.producer.poll(0)
        for kind, records in (("connections", connections), ("listeners", listeners)):
            topic = self.topics[kind]
            for value, count in self._messages(kind, records):
                self._produce_or_spool(topic, value, count)
        self._replay()
        self.producer.poll(0)
        self.spool.sync()
        self.dropped = self.spool.dropped_records

    def send_raw(self, topic: str, value: bytes, records: int = 1) -> None:
        """Produce one ready-made message (tests and benchmarks)."""
        self._produce_or_spool(topic, value, records)
        self.producer.poll(0)

    def _produce_or_spool(self, topic: str, value: bytes, count: int) -> None:
        if self.online and len(self.spool) == 0:
            try:
                self.producer.produce(topic, value, self.key, on_delivery=self._on_delivery)
                self._in_flight += count
                return
            except BufferError:
                self.producer.poll(0.1)
                try:
                    self.producer.produce(topic, value, self.key, on_delivery=self._on_delivery)
                    self._in_flight += count
                    return
                except BufferError:
                    log.warning("kafka sink: producer queue full; spooling")
        self.spool.append(topic, self.key, value, count)
        self.spooled_records += count

    def _probe(self) -> bool:
        now = time.monotonic()
        if now - self._last_probe < self.probe_s:
            return False
        self._last_probe = now
        try:
            meta = self.producer.list_topics(self.topics["connections"], timeout=1.0)
        except Exception:
            return False
        if not meta.brokers:
            return False
        log.info("kafka sink: brokers reachable again; replaying %d spooled records", self.spool.pending_records)
        self.online = True
        self.spool.rewind()
        return True

    def _replay(self, budget: int = 20_000) -> None:
        if len(self.spool) == 0:
            return
        if not self.online and not self._probe():
            return
        # Only a bounded number of replayed messages in flight: the spool
        # drains at the broker's pace without filling librdkafka's memory.
        room = budget - self._replay_in_flight
        if room <= 0 or not self.spool.unread:
            return
        for msg in self.spool.read(min(room, 5000)):
            try:
                self.producer.produce(msg.topic, msg.value, msg.key, on_delivery=self._on_replayed(msg.seq, msg.records))
                self._replay_in_flight += 1
            except BufferError:
                self.spool.rewind()
                break

    def flush(self, timeout_s: float = 5.0) -> None:
        """Deliver queued and spooled messages for up to ``timeout_s``; spool the rest."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._replay()
            remaining = self.producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            if remaining == 0 and len(self.spool) == 0:
                break
            if not self.online and len(self.spool) and not self._probe():
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.spool.sync()
        self.dropped = self.spool.dropped_records

    def close(self) -> None:
        """Spool whatever librdkafka still holds, then close (the next start replays it)."""
        if getattr(self, "producer", None) is None:
            return
        self.producer.purge(in_queue=True, in_flight=False, blocking=True)
        self.producer.poll(0)  # purged (never sent) -> spool
        if self.producer.flush(2.0):  # give in-flight requests their acks
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)
            self.producer.poll(0)
        self.spool.close()
        self.dropped = self.spool.dropped_records
        self.producer = None

    # -- state -------------------------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return max(0, self._in_flight) + self.spool.pending_records

    def stats(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "sent_records": self.sent,
            "delivered_messages": self.delivered_messages,
            "failed_messages": self.failed_messages,
            "errors": self.errors,
            "in_flight_records": max(0, self._in_flight),
            "spooled_records": self.spooled_records,
            "replayed_records": self.replayed_records,
            "spool_pending_records": self.spool.pending_records,
            "spool_pending_messages": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "spool_max_bytes": self.spool.max_bytes,
            "dropped_records": self.spool.dropped_records,
            "dropped_messages": self.spool.dropped_messages,
        }


register_sink("kafka", lambda url, **opts: KafkaSink(url, **opts))
