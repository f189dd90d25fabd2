"""Benchmark: tracer Kafka sink -> broker -> phobos ingest -> chDB (with the rollup views).

Measured in one run on this machine, against a real broker (started here from
the jars of ``tests/kafka.py``, or ``--brokers`` for an existing one):

1. sink alone: records/s that ``KafkaSink`` serialises and gets acknowledged
   (a separate process, like a tracer on another host), nothing else running;
2. end to end, sustained: the sink process and ``KafkaIngest`` into chDB
   running at the same time; records/s from the first record sent until the
   last one is visible in ``connections`` (and the rollups were fed by the
   materialized views on the way);
3. ingest alone: a consumer reading the backlog written in 1 into a fresh
   database (the consumer's ceiling);
4. latency: with the consumer running, one host's interval of records is
   sent every second; time from ``send`` to the records being visible in
   the store (the tracer adds its interval, default 10 s, before ``send``).

    .venv/bin/python tests/bench/bench_kafka.py [--records 1000000] [--partitions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from api.ingest.kafka_consumer import KafkaIngest  # noqa: E402
from api.ingest.kafka_topics import init_topics, topics_for  # noqa: E402
from api.storage import open_store  # noqa: E402

PRODUCER = """
import json, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from factories import T0, connection
from tracer.kafka_sink import KafkaSink
from tracer.records import format_ts

n, hosts, chunk = {records}, {hosts}, 5000
pool = [connection(host=f"host-{{i % hosts}}", service=f"svc-{{i % 500}}", pid=1000 + i % 5000,
                   remote_ip=f"10.{{i % 200}}.{{i % 250}}.{{i % 254 + 1}}", remote_port=1000 + i % 300,
                   connects=i % 9 + 1, closes=i % 5, open=i % 3, ts=format_ts(T0 + (i % 180) * 60))
        for i in range(50_000)]
sinks = [KafkaSink("kafka://{brokers}/{prefix}?spool={spool}/" + str(h), host=f"host-{{h}}") for h in range(hosts)]
print("READY", flush=True)
sys.stdin.readline()
start = time.time()
sent = 0
while sent < n:
    for sink in sinks:
        size = min(chunk, n - sent)
        if size <= 0:
            break
        off = sent % len(pool)
        part = pool[off:off + size]
        if len(part) < size:
            part += pool[: size - len(part)]
        sink.send(part, [])
        sent += size
for sink in sinks:
    sink.flush(120)
elapsed = time.time() - start
stats = [s.stats() for s in sinks]
for sink in sinks:
    sink.close()
print("DONE " + json.dumps({{"start": start, "elapsed": elapsed, "sent": sum(s["sent_records"] for s in stats),
                            "dropped": sum(s["dropped_records"] for s in stats)}}), flush=True)
"""


def run_consumer(store, brokers: str, prefix: str, group: str, expect: int, timeout_s: float) -> tuple[float, dict]:
    topics = {t: k for k, t in topics_for(prefix).items()}
    ingest = KafkaIngest(store, brokers, topics, group=group, batch_records=200_000, batch_interval_s=1.0)
    deadline = time.monotonic() + timeout_s
    while not ingest.assigned and time.monotonic() < deadline:
        ingest.poll(0.2)
    start = time.time()
    while ingest.counts["accepted"] < expect and time.monotonic() < deadline:
        ingest.poll(0.2)
    ingest.flush_all()
    end = time.time()
    stats = ingest.stats()
    ingest.consumer.close()
    return end - start, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--hosts", type=int, default=8, help="sink instances (message keys) in the producer")
    parser.add_argument("--brokers", help="an existing broker instead of starting one")
    parser.add_argument("--latency-samples", type=int, default=15)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="phobos-bench-kafka-"))
    broker = None
    if args.brokers:
        brokers = args.brokers
    else:
        import kafka as kafka_helper

        kafka_helper.install()
        broker = kafka_helper.Broker(work / "broker", tied=True).start()
        brokers = broker.bootstrap
    prefix = "bench" + uuid.uuid4().hex[:8]
    backlog = prefix + "b"
    init_topics(brokers, prefix, partitions=args.partitions)
    init_topics(brokers, backlog, partitions=args.partitions)
    print(f"cpu cores {os.cpu_count()}, broker {brokers}, {args.partitions} partitions per topic, "
          f"{args.records:,} records from {args.hosts} sink instances in one producer process")

    def producer(topic_prefix: str) -> subprocess.Popen:
        script = work / f"producer-{topic_prefix}.py"
        script.write_text(PRODUCER.format(root=str(ROOT), tests=str(ROOT / "tests"), records=args.records,
                                          hosts=args.hosts, brokers=brokers, prefix=topic_prefix,
                                          spool=work / f"spool-{topic_prefix}"))
        proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().startswith("READY")
        return proc

    def go(proc: subprocess.Popen, result: dict) -> threading.Thread:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        reader = threading.Thread(target=lambda: result.update(done=json.loads(
            [ln for ln in proc.stdout if ln.startswith("DONE")][0][5:])))
        reader.start()
        return reader

    try:
        # 1. The sink alone (nothing else running): fills the backlog topics.
        alone: dict = {}
        proc = producer(backlog)
        go(proc, alone).join(900)
        proc.wait(60)
        done = alone["done"]
        print(f"sink -> broker, alone         {done['sent'] / done['elapsed']:>10,.0f} records/s "
              f"({done['sent']:,} acknowledged in {done['elapsed']:.1f} s, dropped {done['dropped']})")

        # 2. End to end: the consumer joins first, then the sink starts; both run at once.
        store = open_store(f"chdb://{work / 'store'}?database=bench_e2e", role="bench")
        store.migrate()
        proc = producer(prefix)
        result: dict = {}
        topics = {t: k for k, t in topics_for(prefix).items()}
        ingest = KafkaIngest(store, brokers, topics, group=f"{prefix}-e2e", batch_records=200_000,
                             batch_interval_s=1.0)
        while not ingest.assigned:
            ingest.poll(0.2)
        reader = go(proc, result)
        deadline = time.monotonic() + 900
        while ingest.counts["accepted"] < args.records and time.monotonic() < deadline:
            ingest.poll(0.2)
        ingest.flush_all()
        visible_at = time.time()
        reader.join(60)
        proc.wait(60)
        done = result["done"]
        rows = store.query(f"SELECT count() FROM {store.db}.connections")[0][0]
        rolled = store.query(f"SELECT sum(records) FROM {store.db}.edges_1m")[0][0]
        e2e = args.records / (visible_at - done["start"])
        print(f"sink -> broker, with consumer {done['sent'] / done['elapsed']:>10,.0f} records/s")
        print(f"end to end (sink .. visible)  {e2e:>10,.0f} records/s "
              f"({rows:,} rows in connections, {rolled:,} records in edges_1m, "
              f"{visible_at - done['start']:.1f} s)")
        ingest.consumer.close()

        # Ingest alone, from the backlog, into a fresh database of the same directory.
        store2 = open_store(f"chdb://{work / 'store'}?database=bench_backlog", role="bench")
        store2.migrate()
        took, stats = run_consumer(store2, brokers, backlog, f"{prefix}-backlog", args.records, 600)
        print(f"ingest alone (backlog)        {stats['accepted'] / took:>10,.0f} records/s "
              f"({stats['accepted']:,} in {took:.1f} s, {stats['batches']} batches)")

        # Latency: one interval's records from one host per second, consumer running.
        store3 = open_store(f"chdb://{work / 'store'}?database=bench_latency", role="bench")
        store3.migrate()
        ingest = KafkaIngest(store3, brokers, topics, group=f"{prefix}-latency", batch_records=200_000,
                             batch_interval_s=1.0)
        ingest.consumer.unsubscribe()
        from confluent_kafka import OFFSET_END, TopicPartition

        ingest.consumer.assign([TopicPartition(t, p, OFFSET_END) for t in topics for p in range(args.partitions)])
        ingest.assigned = True
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                ingest.poll(0.1)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        from factories import connection
        from tracer.kafka_sink import KafkaSink

        sink = KafkaSink(f"kafka://{brokers}/{prefix}?spool={work / 'spool-latency'}", host="latency-host")
        time.sleep(2)
        latencies = []
        for sample in range(args.latency_samples):
            marker = 4_000_000_000 + sample
            records = [connection(host="latency-host", netns=marker, pid=i) for i in range(500)]
            sent_at = time.time()
            sink.send(records, [])
            while time.time() - sent_at < 30:
                n = store3.query(f"SELECT count() FROM {store3.db}.connections WHERE netns = {marker}")[0][0]
                if n == len(records):
                    latencies.append(time.time() - sent_at)
                    break
                time.sleep(0.02)
            time.sleep(max(0.0, 1.0 - (time.time() - sent_at)))
        stop.set()
        thread.join(10)
        sink.close()
        ingest.consumer.close()
        for st in (store3, store2, store):
            st.close()
        if latencies:
            latencies.sort()
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
            print(f"latency send -> visible       p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s, "
                  f"max {latencies[-1]:.2f} s over {len(latencies)} samples "
                  f"(batch interval 1.0 s; the tracer adds its own interval before sending)")
        else:
            print("latency: no sample became visible within 30 s")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
