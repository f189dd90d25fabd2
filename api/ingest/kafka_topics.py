"""Kafka as Phobos uses it: the record topics, client settings, topic set-up and server mode.

Messages (written by ``tracer.kafka_sink``): JSON lines (``JSONEachRow``), one
or more records per message, connection records on ``PREFIX.connections`` and
listener records on ``PREFIX.listeners`` (default prefix ``phobos``), key =
host.  ``init_topics`` creates the topics (``phobos kafka init``).

Server mode: ``migrate_kafka`` has the store's migration runner apply
``sql/kafka/*.sql`` for the topics (Kafka engine queues, materialized views
into ``connections``/``listeners``, a dead-letter view), so that a
ClickHouse server consumes them itself (``phobos migrate --kafka``).
Consumer mode is ``kafka_consumer.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.config import SETTINGS
from api.storage import Store, StoreError
from api.storage.migrations import KAFKA_SQL_DIR, apply_kafka_schema, kafka_schema_statements
from tracer.kafka_sink import KINDS, topics_for
from tracer.settings import librdkafka_properties

__all__ = ["DEFAULT_PREFIX", "DEFAULT_GROUP", "DEFAULT_ENGINE_GROUP", "KINDS", "topics_for", "kafka_conf", "init_topics",
           "migrate_kafka", "kafka_statements"]

DEFAULT_PREFIX = SETTINGS["TOPIC_PREFIX"].default
#: Consumer groups: of ``phobos ingest``, and of ClickHouse itself in server mode.
DEFAULT_GROUP = SETTINGS["KAFKA_GROUP"].default
DEFAULT_ENGINE_GROUP = SETTINGS["KAFKA_ENGINE_GROUP"].default


def kafka_conf(brokers: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """librdkafka settings: the brokers, every ``PHOBOS_KAFKA_*`` variable that is not a Phobos setting
    (``PHOBOS_KAFKA_SASL_PASSWORD`` -> ``sasl.password``; ``PHOBOS_KAFKA_BROKERS`` is not one), then ``extra``."""
    conf: dict[str, Any] = {"bootstrap.servers": brokers, **librdkafka_properties(SETTINGS)}
    conf.update(extra or {})
    return conf


def init_topics(brokers: str, prefix: str = DEFAULT_PREFIX, partitions: int = 6, replication: int = 1,
                retention_hours: float = 72, conf: dict[str, str] | None = None,
                timeout_s: float = 30.0) -> list[str]:
    """Create the topics of ``prefix`` that are missing; returns what it did.

    Idempotent: existing topics are left as they are (a partition count lower
    than asked for is reported, never changed - that would move hosts' keys).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_conf(brokers, conf))
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


def migrate_kafka(store: Store, brokers: str, prefix: str = DEFAULT_PREFIX, group: str = DEFAULT_ENGINE_GROUP,
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
    """The statements ``migrate_kafka`` would run on an empty store."""
    return kafka_schema_statements(db, brokers=brokers, group=group, topics=topics_for(prefix), ttl_days=ttl_days,
                                   directory=directory)
