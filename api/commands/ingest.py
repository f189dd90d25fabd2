"""``phobos ingest`` and ``phobos kafka``: the Kafka consumer and topic set-up as commands.

``phobos ingest`` runs ``api.ingest.kafka_consumer.KafkaIngest`` until
SIGINT/SIGTERM (or ``--duration``/``--idle-exit``), with a status line on
stderr every ``--report`` seconds and, with ``--metrics-port``, its counters
and lag at ``http://127.0.0.1:PORT/metrics``.  ``phobos kafka init`` creates
the record topics; ``phobos migrate --kafka`` (its flags are here) applies
the Kafka-engine schema for a ClickHouse server.  Every flag has a
``PHOBOS_*`` variable; ``PHOBOS_KAFKA_*`` ones are librdkafka properties.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from api.config import SETTINGS
from api.ingest.kafka_topics import KINDS, init_topics, migrate_kafka, topics_for
from api.storage import DEFAULT_STORE_URL, Store, open_store
from tracer.prometheus import Exposition, MetricsServer

__all__ = ["configure_parser", "run", "configure_kafka_parser", "run_kafka", "configure_migrate_parser",
           "migrate_from_args", "prometheus_text"]


def prometheus_text(stats: dict[str, Any]) -> str:
    """The consumer's counters and lag (``KafkaIngest.stats``) in the Prometheus text format."""
    out = Exposition()
    out.metric("phobos_ingest_records_total", "counter", "Records read from Kafka by outcome.",
               [({"outcome": "accepted"}, stats["accepted"]), ({"outcome": "rejected"}, stats["rejected"])])
    out.metric("phobos_ingest_batches_total", "counter", "Batches inserted into the store and committed.",
               [(None, stats["batches"])])
    out.metric("phobos_ingest_rows_per_second", "gauge", "Records accepted per second since the last report.",
               [(None, stats["rows_per_s"])])
    samples = []
    for tp, lag in sorted(stats["lag"].items()):
        topic, _, partition = tp.rpartition("/")
        samples.append(({"topic": topic, "partition": partition}, lag))
    out.metric("phobos_ingest_lag_messages", "gauge", "Messages behind the partition's high watermark.", samples)
    return out.text()


def _env(name: str) -> Any:
    return SETTINGS.default(name, "phobos")


def _add_kafka_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka", default=_env("KAFKA_BROKERS"), required=not _env("KAFKA_BROKERS"),
                        metavar="BROKERS", help="bootstrap servers, host:9092[,host:9092] [PHOBOS_KAFKA_BROKERS]")
    parser.add_argument("--topic-prefix", default=_env("TOPIC_PREFIX"),
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
    parser.add_argument("--group", default=_env("KAFKA_GROUP"),
                        help="consumer group [PHOBOS_KAFKA_GROUP, default %(default)s]")
    parser.add_argument("--store", default=_env("STORE") or DEFAULT_STORE_URL,
                        help="store URL [PHOBOS_STORE, default %(default)s]")
    parser.add_argument("--batch-records", type=int, default=_env("BATCH_RECORDS"),
                        help="records per partition batch [default %(default)s]")
    parser.add_argument("--batch-interval", type=float, default=_env("BATCH_INTERVAL"),
                        help="seconds before a partition's partial batch is inserted [default %(default)s]")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20,
                        help="larger messages go to dead_letters [default %(default)s]")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run on)")
    parser.add_argument("--idle-exit", type=float, default=0.0,
                        help="stop after this many seconds without messages (0: never)")
    parser.add_argument("--report", type=float, default=10.0,
                        help="seconds between status lines on stderr (lag, rows/s, rejected) [default %(default)s]")
    parser.add_argument("--metrics-port", type=int, default=_env("INGEST_METRICS_PORT"),
                        help="serve Prometheus /metrics on 127.0.0.1:PORT (0: off)")
    return parser


def _serve_metrics(port: int, ingest: Any) -> tuple[MetricsServer, dict[str, str]]:
    """``/metrics`` on 127.0.0.1:``port``, answering the text of the last report (a scrape never waits on the consumer)."""
    cache = {"text": prometheus_text({**ingest.counts, "rows_per_s": 0.0, "lag": {}})}
    return MetricsServer(lambda: cache["text"], "127.0.0.1", port, name="phobos-ingest-metrics"), cache


def run(args: argparse.Namespace) -> int:
    """``phobos ingest``: consume until SIGINT/SIGTERM (or --duration / --idle-exit)."""
    from api.ingest.kafka_consumer import KafkaIngest

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
                metrics[0].close()
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
    parser.add_argument("--kafka", default=_env("KAFKA_BROKERS"), metavar="BROKERS",
                        help="also create Kafka engine queues and views so that ClickHouse consumes BROKERS "
                        "itself (server mode) [PHOBOS_KAFKA_BROKERS]")
    parser.add_argument("--topic-prefix", default=_env("TOPIC_PREFIX"),
                        help="with --kafka: topics PREFIX.connections / PREFIX.listeners [default %(default)s]")
    parser.add_argument("--kafka-group", default=_env("KAFKA_ENGINE_GROUP"),
                        help="with --kafka: ClickHouse's consumer group [default %(default)s]")
    return parser


def migrate_from_args(store: Store, args: argparse.Namespace) -> list[str]:
    """Apply the Kafka set when ``phobos migrate`` was given ``--kafka``."""
    if not getattr(args, "kafka", None):
        return []
    return migrate_kafka(store, args.kafka, prefix=args.topic_prefix, group=args.kafka_group,
                         ttl_days=getattr(args, "ttl_days", None) or 30)
