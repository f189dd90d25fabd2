"""Benchmark: chDB store ingest rate with and without the rollup views, and
per-minute service-edge query latency over 1 h and 24 h.

Run:  .venv/bin/python tests/bench/bench_store.py [--rows 4000000] [--with-fleet]

Prints figures measured in one run, on one machine:
* records/s into `connections` with every materialized view attached, and
  the same into a copy of the table without views (the ratio is the cost of
  the rollups);
* with --with-fleet: time to backfill 24 h of a 500-service/5000-instance
  fleet at 60 s with the simulator, then p50/p95 of a per-minute
  service-to-service edge query over the last 1 h and 24 h.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from api.storage import open_store  # noqa: E402
from tracer.records import CONNECTION_FIELDS  # noqa: E402


def synthetic_connections(rows: int, start: int, edges: int = 20000, interval: int = 10, seed: int = 1) -> pa.Table:
    """Records as tracers write them, vectorised: 5000 hosts, 500 services,
    ``edges`` distinct endpoint pairs each reported every ``interval`` s
    (``edges=0``: every row a new pair - the worst case for the rollups)."""
    rng = np.random.default_rng(seed)
    if edges:
        pair = np.arange(rows) % edges
        host = rng.integers(0, 5000, edges)[pair]
        server = rng.integers(0, 5000, edges)[pair]
        ts = start + (np.arange(rows) // edges) * interval
    else:
        host = rng.integers(0, 5000, rows)
        server = rng.integers(0, 5000, rows)
        ts = start + (np.arange(rows) // 20000) * interval
    cols = {
        "v": np.ones(rows, np.uint8),
        "ts": ts,
        "interval_s": np.full(rows, interval, np.uint32),
        "dc": pa.DictionaryArray.from_arrays((host % 2).astype(np.int32), pa.array(["dc-a", "dc-b"])),
        "host": pa.DictionaryArray.from_arrays(host.astype(np.int32), pa.array([f"host-{i}" for i in range(5000)])),
        "host_ip": (0x0A000000 + host).astype(np.uint32),
        "netns": np.full(rows, 4026531840, np.uint32),
        "pid": rng.integers(100, 60000, rows).astype(np.uint32),
        "comm": pa.DictionaryArray.from_arrays((host % 500).astype(np.int32), pa.array([f"svc{i}" for i in range(500)])),
        "service": pa.DictionaryArray.from_arrays((host % 500).astype(np.int32), pa.array([f"svc-{i}" for i in range(500)])),
        "container_id": pa.array([""] * rows),
        "pod": pa.array([""] * rows),
        "namespace": pa.array([""] * rows),
        "direction": pa.DictionaryArray.from_arrays((np.arange(rows) % 2).astype(np.int32), pa.array(["outbound", "inbound"])),
        "local_ip": (0x0A000000 + host).astype(np.uint32),
        "local_port": np.zeros(rows, np.uint16),
        "remote_ip": (0x0A000000 + server).astype(np.uint32),
        "remote_port": np.full(rows, 8080, np.uint16),
        "connects": rng.integers(0, 100, rows).astype(np.uint32),
        "accepts": np.zeros(rows, np.uint32),
        "closes": rng.integers(0, 100, rows).astype(np.uint32),
        "failures": rng.integers(0, 2, rows).astype(np.uint32),
        "open": rng.integers(0, 50, rows).astype(np.uint32),
        "duration_ms_sum": rng.integers(0, 10**6, rows).astype(np.uint64),
        "bytes_sent": np.zeros(rows, np.uint64),
        "bytes_received": np.zeros(rows, np.uint64),
    }
    assert list(cols) == [f.name for f in CONNECTION_FIELDS]
    return pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in cols.items()})


def insert_rate(store, table: str, data: pa.Table, batch: int) -> float:
    started = time.perf_counter()
    for offset in range(0, data.num_rows, batch):
        store.insert_arrow(table, data.slice(offset, batch), dedup_token=f"bench-{table}-{offset}")
    return data.num_rows / (time.perf_counter() - started)


SERVICE_EDGES = """
SELECT e.ts AS minute, e.service AS client, if(s.service = '', 'INTERNET', s.service) AS server,
       sum(e.connects) AS connects, sum(e.failures) AS failures, sum(e.open_seconds) / 60 AS avg_open
FROM {db}.edges_1m AS e
ASOF LEFT JOIN (
    SELECT ip, port, service, min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM {db}.listener_spans
    WHERE hour >= toStartOfHour(toDateTime({{lo:UInt32}}, 'UTC')) - INTERVAL 1 HOUR
      AND hour <= toDateTime({{hi:UInt32}}, 'UTC')
    GROUP BY ip, port, service
) AS s ON e.remote_ip = s.ip AND e.remote_port = s.port AND e.ts >= s.first_seen
WHERE e.direction = 'outbound'
  AND e.ts >= toDateTime({{lo:UInt32}}, 'UTC') AND e.ts < toDateTime({{hi:UInt32}}, 'UTC')
GROUP BY minute, client, server
"""


def query_latency(store, lo: int, hi: int, runs: int) -> tuple[float, float, int]:
    sql = SERVICE_EDGES.format(db=store.db)
    store.query_arrow(sql, {"lo": lo, "hi": hi})  # warm
    times = []
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = store.query_arrow(sql, {"lo": lo, "hi": hi}).num_rows
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(round(0.95 * (len(times) - 1)))], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--with-fleet", action="store_true", help="also backfill 24 h and time queries")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="phobos-bench-") as tmp:
        store = open_store(f"chdb://{tmp}/store", role="bench")
        store.migrate()
        store.execute(f"CREATE TABLE {store.db}.connections_noviews AS {store.db}.connections")
        start = int(time.time()) // 3600 * 3600 - 3 * 3600
        for label, data in (
            ("20k endpoint pairs every 10 s (tracer default)", synthetic_connections(args.rows, start)),
            ("every record a new pair (worst case)", synthetic_connections(args.rows, start, edges=0, interval=60, seed=2)),
        ):
            plain = insert_rate(store, "connections_noviews", data, args.batch)
            with_views = insert_rate(store, "connections", data, args.batch)
            print(f"{label}, {args.rows:,} records in batches of {args.batch:,}:")
            print(f"  insert into connections, no views:       {plain:>12,.0f} records/s")
            print(f"  insert into connections + rollup views:  {with_views:>12,.0f} records/s "
                  f"(ratio {with_views / plain:.2f}; goal >= 500,000/s)")
        assert store.query(f"SELECT sum(connects) FROM {store.db}.edges_1m") == \
            store.query(f"SELECT sum(connects) FROM {store.db}.connections")
        if args.with_fleet:
            from api.simulation import simulate

            store.execute(f"DROP DATABASE {store.db}")
            store.close()
            store = open_store(f"chdb://{tmp}/store?database=fleet", role="bench")
            store.migrate()
            sim_args = simulate.build_parser().parse_args(
                ["--areas", "30", "--services", "500", "--instances", "5000", "--from", "-24h",
                 "--interval", "60", "--seed", "1", "--quiet"]
            )
            started = time.perf_counter()
            summary = simulate.simulate(store, simulate.config_from_args(sim_args))
            took = time.perf_counter() - started
            total = sum(summary.records.values())
            print(f"backfill 24 h, 500 services / 5000 instances at 60 s: {took:.1f} s, "
                  f"{total:,} records ({total / took:,.0f}/s; goal <= 300 s)")
            hi = store.query(f"SELECT toUnixTimestamp(max(ts)) + 60 FROM {store.db}.edges_1m")[0][0]
            for label, span in (("1 h", 3600), ("24 h", 86400)):
                p50, p95, rows = query_latency(store, hi - span, hi, args.runs)
                print(f"per-minute service-edge query over {label}: p50 {p50:.0f} ms, p95 {p95:.0f} ms ({rows:,} rows)")
        store.close()


if __name__ == "__main__":
    main()
