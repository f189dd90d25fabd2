"""Embedded mode with Kafka: the process that serves a chDB store also
consumes the record topics into it (no second process may open the store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from api.ingest.kafka_topics import init_topics
from factories import connection, listener
from kafka import kafka_broker  # noqa: F401 - pytest fixture
from test_api_serve import free_port, post, wait_ready
from tracer.kafka_sink import KafkaSink

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def count(port: int) -> tuple[int, int]:
    status, body = post(port, "/api/v1/sql", {
        "query": "SELECT (SELECT sum(connects) FROM phobos.connections), (SELECT count() FROM phobos.listeners)",
        "format": "json"})
    assert status == 200, body
    return tuple(body["rows"][0])


def test_serve_consumes_kafka_into_the_store_it_serves(kafka_broker, tmp_path):
    prefix = "t" + uuid.uuid4().hex[:10]
    init_topics(kafka_broker.bootstrap, prefix, partitions=2)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOBOS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.commands.serve", "--store", f"chdb://{tmp_path}/db", "--port", str(port),
         "--migrate", "--kafka", kafka_broker.bootstrap, "--topic-prefix", prefix],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc)
        records = [connection(pid=i, connects=i % 5 + 1) for i in range(500)]
        sink = KafkaSink(f"kafka://{kafka_broker.bootstrap}/{prefix}", host="host-a",
                         spool=str(tmp_path / "spool"))
        sink.send(records, [listener()])
        sink.flush(30)
        sink.close()
        want = (sum(r["connects"] for r in records), 1)
        deadline = time.time() + 60
        while count(port) != want and time.time() < deadline:
            time.sleep(0.5)
        assert count(port) == want
        # SIGTERM stops the server and the consumer cleanly, offsets committed.
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        assert f"consuming {prefix}.connections, {prefix}.listeners" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
