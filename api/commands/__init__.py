"""Subcommands of ``phobos`` that run a component as a process of its own.

``ingest.py``: ``phobos ingest`` (the Kafka consumer) and ``phobos kafka``
(topic set-up), plus the Kafka flags of ``phobos migrate``.
"""
