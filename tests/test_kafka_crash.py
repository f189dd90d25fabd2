"""The ingest consumer killed with SIGKILL mid-batch, restarted: totals exact.

The consumer runs in a subprocess on its own chDB directory.  It is killed
at the worst moments - after a batch was inserted but before its offset was
committed (held there by a test hook), and once at an arbitrary time - and
restarted each time; the last run drains the topics.  The replayed batches
must have the same boundaries and tokens, so that raw records and rollups
count every record exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from api.ingest.kafka_topics import init_topics, topics_for
from kafka import kafka_broker  # noqa: F401 - pytest fixture
from test_kafka_pipeline import stream

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent

CONSUMER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from api.storage import open_store
    from api.ingest.kafka_consumer import KafkaIngest

    hold_after = int(os.environ.get("HOLD_AFTER", "0"))
    inserted = []

    def after_insert(batch_id):
        inserted.append(batch_id)
        print("INSERTED", batch_id, flush=True)
        if hold_after and len(inserted) == hold_after:
            print("HOLD", batch_id, flush=True)
            time.sleep(600)  # killed here: inserted, not committed

    with open_store({store!r}, role="crash test") as store:
        store.migrate()
        ingest = KafkaIngest(store, {brokers!r}, {topics!r}, group={group!r}, batch_records=int(os.environ["BATCH_RECORDS"]),
                             batch_interval_s=0.5, conf={{"session.timeout.ms": "6000"}},
                             after_insert=after_insert)
        stats = ingest.run(idle_exit_s=4)
        ingest.close()
    print("DONE", json.dumps({{k: v for k, v in stats.items() if k != "lag"}}), flush=True)
""")


def query(store_url: str, sql: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "api.commands.phobos", "sql", "--store", store_url, "--format", "json", sql],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def start(script: Path, hold_after: int = 0, batch_records: int = 3000) -> subprocess.Popen:
    # Each run batches differently (as a restart with other settings, or live
    # traffic arriving at other times, would): only the intent committed
    # before an insert makes the replayed batch match the interrupted one.
    env = {**os.environ, "HOLD_AFTER": str(hold_after), "BATCH_RECORDS": str(batch_records)}
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, marker: str, timeout_s: float = 90) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith(marker):
            return lines
    proc.kill()
    raise AssertionError(f"consumer never printed {marker!r}:\n" + "\n".join(lines[-30:]))


def test_sigkill_mid_batch_and_restart_keeps_totals_exact(kafka_broker, tmp_path):
    prefix = "t" + uuid.uuid4().hex[:10]
    init_topics(kafka_broker.bootstrap, prefix, partitions=3)
    records = stream(30_000, hosts=6)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True,
                         "linger.ms": 20})
    topic = topics_for(prefix)["connections"]
    for start_at in range(0, len(records), 200):
        chunk = records[start_at:start_at + 200]
        producer.produce(topic, b"\n".join(json.dumps(r).encode() for r in chunk), chunk[0]["host"].encode())
    assert producer.flush(30) == 0

    store_url = f"chdb://{tmp_path / 'store'}"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER.format(root=str(ROOT), store=store_url, brokers=kafka_broker.bootstrap,
                                      topics={t: k for k, t in topics_for(prefix).items()}, group=f"{prefix}-g"))

    # 1: killed after its 3rd insert, before that batch's commit.
    proc = start(script, hold_after=3)
    held = wait_for(proc, "HOLD")[-1].split()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # 2: the restart must replay the held batch with the same boundaries first;
    #    killed again after its 2nd insert.
    proc = start(script, hold_after=2, batch_records=5000)
    lines = wait_for(proc, "HOLD")
    replayed = [line.split()[1] for line in lines if line.startswith("INSERTED")]
    assert held in replayed, (held, replayed)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # 3: killed at an arbitrary moment while it works.
    proc = start(script, batch_records=2200)
    wait_for(proc, "INSERTED")
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # 4: runs to the end.
    proc = start(script, batch_records=4000)
    done = wait_for(proc, "DONE", timeout_s=120)
    assert proc.wait(30) == 0, "\n".join(done[-20:])

    row = query(store_url, "SELECT count() AS n, sum(connects) AS c, sum(closes) AS cl FROM phobos.connections")[0]
    assert row == {"n": len(records), "c": sum(r["connects"] for r in records),
                   "cl": sum(r["closes"] for r in records)}
    rollup = query(store_url, "SELECT sum(records) AS n, sum(connects) AS c FROM phobos.edges_1m")[0]
    assert rollup == {"n": len(records), "c": sum(r["connects"] for r in records)}
    hourly = query(store_url, "SELECT sum(connects) AS c FROM phobos.edges_1h")[0]
    assert hourly["c"] == sum(r["connects"] for r in records)


def test_phobos_ingest_command_reports_and_stops_cleanly_on_sigterm(kafka_broker, tmp_path):
    prefix = "t" + uuid.uuid4().hex[:10]
    init_topics(kafka_broker.bootstrap, prefix, partitions=2)
    records = stream(5_000)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True})
    topic = topics_for(prefix)["connections"]
    for start_at in range(0, len(records), 500):
        producer.produce(topic, b"\n".join(json.dumps(r).encode() for r in records[start_at:start_at + 500]))
    producer.produce(topic, b"not json")
    assert producer.flush(30) == 0
    store_url = f"chdb://{tmp_path / 'store'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.commands.phobos", "ingest", "--kafka", kafka_broker.bootstrap,
         "--topic-prefix", prefix, "--group", f"{prefix}-cli", "--store", store_url, "--report", "0.5",
         "-X", "session.timeout.ms=6000"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reports = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("phobos-ingest "):
            reports.append(json.loads(line[len("phobos-ingest "):]))
            if reports[-1]["accepted"] == len(records) and reports[-1]["lag_messages"] == 0:
                break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    last = reports[-1]
    assert last["accepted"] == len(records) and last["rejected"] == 1
    assert {"rows_per_s", "lag_messages", "batches"} <= set(last)
    row = query(store_url, "SELECT count() AS n, sum(connects) AS c FROM phobos.connections")[0]
    assert row == {"n": len(records), "c": sum(r["connects"] for r in records)}
    dead = query(store_url, "SELECT source, reason FROM phobos.dead_letters")
    assert len(dead) == 1 and dead[0]["reason"].startswith("not JSON")
