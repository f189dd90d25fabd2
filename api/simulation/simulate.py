"""``phobos simulate``: write a realistic fleet's records without root or eBPF.

What it writes: the ConnectionRecords and ListenerRecords a tracer on every
host of a simulated fleet (``api/simulation/fleet.py``) would have sent, plus the
matching service catalog.  For every interval and every pair of a client
instance and a server instance it talks to, one outbound record at the client
(local port 0, remote = the server's ip:port) and one inbound record at the
server (remote = the client's ip, remote port 0), with consistent counts:
``accepts`` at the server equals ``connects - failures`` at the client (failed
connects are never accepted), and ``closes``/``open``/``duration_ms_sum``
are equal at both ends, bytes mirrored.  External dependencies have only the
outbound side, INTERNET and untraced clients only the inbound side.  Every
instance reports its listener each interval.

How: all numbers are drawn with numpy over whole arrays of pairs, one random
generator per interval seeded by ``(seed, ts)``, so an interval's records do
not depend on how the run was chunked; no per-record Python.  Records are
inserted as Arrow tables of about a million rows with a deterministic dedup
token, so running the same simulation over the same range again stores
nothing twice.  Interval ends are snapped to multiples of ``--interval``.

Load model: pooled connections (databases, caches, queues, gRPC) keep a pool
open and reconnect rarely; HTTP-style callers open short connections at a
rate that follows a diurnal sinusoid over the UTC day (low at 03:00, high at
15:00) with per-pair noise.  Incidents make one service's clients fail
connects and lose open connections (and many of the connects that get
through lose their first SYN: a 1 s handshake and a retransmit; otherwise a
pair's handshakes take its usual few hundred microseconds); deploys move a service's pods to new
addresses and may add or remove an edge.  ``simulate`` returns (and ``run``
prints) the list of these events.

Caveat: events are placed inside the backfilled range; ``--live`` keeps the
fleet in its final state after it.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from api.catalog.versions import load_into_store
from api.ingest.alerts import insert_alerts
from api.config import SETTINGS
from api.simulation.fleet import (
    INTERNET_CLIENTS,
    PAIR_INTERNET,
    Fleet,
    SimConfig,
    build_fleet,
)
from api.storage import DEFAULT_STORE_URL, Store
from tracer import timestamps
from tracer.catalog import parse_catalog
from tracer.records import CONNECTION_FIELDS, HANDSHAKE_BUCKETS, HANDSHAKE_MIN_LOG2, LISTENER_FIELDS, VERSION, format_ts

__all__ = [
    "SimConfig",
    "Summary",
    "build_fleet",
    "simulate",
    "configure_parser",
    "build_parser",
    "config_from_args",
    "default_progress",
    "parse_time",
    "write_interval",
    "write_live",
    "run",
    "main",
]

#: Rows per insert; chDB reads an Arrow table in place, large batches are cheapest.
CHUNK_ROWS = 1_000_000

EXAMPLES = """examples:
  phobos simulate --from -24h --areas 30 --services 500 --instances 5000   # one day, 5000 instances
  phobos simulate --from -1h --live          # an hour of history, then keep writing in real time
  phobos simulate --areas 3 --services 12 --instances 40 --from 2026-01-01T00:00:00Z --to 2026-01-01T02:00:00Z
"""


# -- the model in motion ------------------------------------------------------

def diurnal(ts: int | np.ndarray) -> Any:
    """Load factor over the UTC day: 0.2 at 03:00, 1.0 at 15:00."""
    hours = (np.asarray(ts) % 86400) / 3600.0
    return 0.6 + 0.4 * np.sin(2 * np.pi * (hours - 9.0) / 24.0)


def _encode(values: list[str]) -> tuple[np.ndarray, pa.Array]:
    """Dictionary codes per slot and the dictionary: unique values in sorted order."""
    uniq = sorted(set(values))
    index = {v: k for k, v in enumerate(uniq)}
    codes = np.fromiter((index[v] for v in values), dtype=np.int32, count=len(values))
    return codes, pa.array(uniq, type=pa.string())


class _EpochArrays:
    """Everything record generation needs for one epoch, restricted to active pairs."""

    def __init__(self, fleet: Fleet, epoch_index: int):
        f, ep = fleet, fleet.epochs[epoch_index]
        self.epoch = ep
        active = (f.p_edge < 0) | ep.edge_active[np.maximum(f.p_edge, 0)]
        act = np.flatnonzero(active)
        self.client = f.p_client[act]
        self.server = f.p_server[act]
        self.kind = f.p_kind[act]
        self.pooled = f.p_pooled[act]
        self.pool = f.p_pool[act]
        self.lam = f.p_lam[act]
        self.dur_ms = f.p_dur_ms[act]
        self.req = f.p_req_bytes[act]
        self.ratio = f.p_resp_ratio[act]
        # Each pair's usual handshake time (a round trip and the server's
        # accept), fixed per pair: a few hundred microseconds, a few ms for some.
        base = np.random.default_rng([f.config.seed, 0x4853]).lognormal(np.log(400.0), 0.7, len(f.p_client))
        self.hs_us = base[act]
        self.port = f.p_port[act]
        self.out = self.client >= 0
        self.inb = self.server >= 0
        self.out_rip = np.where(self.inb, ep.ip[np.maximum(self.server, 0)], f.p_remote_ip[act]).astype(np.uint32)
        self.in_rip = np.where(self.out, ep.ip[np.maximum(self.client, 0)], f.p_remote_ip[act]).astype(np.uint32)
        self.internet = np.flatnonzero(self.kind == PAIR_INTERNET)
        if ep.failing >= 0:
            self.failing = np.flatnonzero(self.inb & (f.inst_service[np.maximum(self.server, 0)] == ep.failing))
        else:
            self.failing = np.zeros(0, dtype=np.int64)
        # identity columns per instance slot
        n = f.n_instances
        svc = f.inst_service
        self.dc_codes, self.dc_dict = f.inst_dc.astype(np.int32), pa.array(f.dcs)
        self.host_codes, self.host_dict = _encode(ep.host)
        self.comm_codes, self.comm_dict = _encode([f.svc_comm[s] for s in svc])
        self.svc_codes, self.svc_dict = _encode([f.svc_name[s] for s in svc])
        self.ns_codes, self.ns_dict = _encode([f.svc_namespace[s] for s in svc])
        self.pod_codes, self.pod_dict = _encode(ep.pod)
        self.cid_codes, self.cid_dict = _encode(ep.container_id)
        self.listen_port = f.svc_port[svc]
        assert len(self.host_codes) == n


def _interval(fleet: Fleet, ea: _EpochArrays, ts: int) -> dict[str, np.ndarray]:
    """Counts of every active pair for the interval ending at ``ts`` (idle pairs dropped)."""
    cfg = fleet.config
    rng = np.random.default_rng([cfg.seed, int(ts)])
    n = len(ea.lam)
    noise = rng.lognormal(0.0, 0.3, n)
    lam = ea.lam * np.where(ea.pooled, 1.0, diurnal(ts)) * noise
    attempts = rng.poisson(lam)
    failures = np.zeros(n, dtype=np.int64)
    open_ = np.where(ea.pooled, ea.pool, 0)
    fi = ea.failing
    if len(fi):
        # The failing service refuses or times out: retries pile up at its
        # clients, most fail, pools lose most of their connections.  A
        # client retries each failed connect about twice within the minute,
        # and one that seldom connects still tries a few times: an incident
        # in a quiet service stands out in the fleet's failures too.
        attempts[fi] += rng.poisson(np.where(ea.pooled[fi], ea.pool[fi] * 2.0, lam[fi] * 2.0 + 3.0))
        failures[fi] = rng.binomial(attempts[fi], 0.6)
    established = attempts - failures
    # A connect that got through an overloaded server often lost its first
    # SYN: it took the client's 1 s retransmission timeout, and the SYN
    # counts as a retransmitted segment.
    slow = np.zeros(n, dtype=np.int64)
    if len(fi):
        slow[fi] = rng.binomial(established[fi], 0.4)
    short = ~ea.pooled
    open_ = np.where(short, rng.poisson(established * (ea.dur_ms / 1000.0) / cfg.interval), open_)
    if len(fi):
        open_[fi] = open_[fi] * 3 // 10
    closes = established
    duration = (closes * ea.dur_ms * rng.lognormal(0.0, 0.2, n)).astype(np.uint64)
    sent = ((established + open_) * ea.req * noise).astype(np.uint64)
    received = (sent * ea.ratio).astype(np.uint64)
    in_rip = ea.in_rip.copy()
    if len(ea.internet):
        in_rip[ea.internet] = INTERNET_CLIENTS[rng.integers(0, len(INTERNET_CLIENTS), len(ea.internet))]
    keep = np.flatnonzero((attempts + open_) > 0)
    return {
        "idx": keep, "connects": attempts[keep], "failures": failures[keep],
        "accepts": established[keep], "closes": closes[keep], "open": open_[keep],
        "duration": duration[keep], "sent": sent[keep], "received": received[keep],
        "in_rip": in_rip[keep], "slow": slow[keep], "hs_us": ea.hs_us[keep],
    }


def _dict(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32()), dictionary)


def _instance_columns(ea: _EpochArrays, slot: np.ndarray) -> dict[str, pa.Array]:
    """Where and what each record's instance is: the fields both record kinds share."""
    return {
        "dc": _dict(ea.dc_codes[slot], ea.dc_dict),
        "host": _dict(ea.host_codes[slot], ea.host_dict),
        "pid": pa.array(ea.epoch.pid[slot]),
        "comm": _dict(ea.comm_codes[slot], ea.comm_dict),
        "service": _dict(ea.svc_codes[slot], ea.svc_dict),
        "container_id": _dict(ea.cid_codes[slot], ea.cid_dict),
        "pod": _dict(ea.pod_codes[slot], ea.pod_dict),
        "namespace": _dict(ea.ns_codes[slot], ea.ns_dict),
    }


_OPTIONAL_TYPES = {"uint": pa.uint64(), "uints": pa.list_(pa.uint32()), "ip": pa.string()}


def connection_table(fleet: Fleet, ea: _EpochArrays, parts: list[tuple[int, dict]]) -> pa.Table:
    """The ConnectionRecords of some intervals of one epoch as an Arrow table.

    (Presorting the rows like the table was measured: it made inserts slower.)
    """
    ts = np.concatenate([np.full(len(p["idx"]), t, dtype=np.int64) for t, p in parts])
    cat = {k: np.concatenate([p[k] for _, p in parts]) for k in parts[0][1]}
    idx = cat["idx"]
    o = np.flatnonzero(ea.out[idx])
    i = np.flatnonzero(ea.inb[idx])
    po, pi = idx[o], idx[i]
    slot = np.concatenate([ea.client[po], ea.server[pi]])
    n_o, n = len(o), len(o) + len(i)
    ep = ea.epoch
    zeros_o = np.zeros(n_o, dtype=np.uint32)
    zeros_i = np.zeros(n - n_o, dtype=np.uint32)
    c = cat

    def both(out_vals: np.ndarray, in_vals: np.ndarray, dtype: Any) -> np.ndarray:
        return np.concatenate([out_vals, in_vals]).astype(dtype, copy=False)

    direction = np.concatenate([np.zeros(n_o, np.int8), np.ones(n - n_o, np.int8)])
    stamps = np.concatenate([ts[o], ts[i]])
    numeric = {
        "local_port": both(np.zeros(n_o, np.uint16), ea.port[pi], np.uint16),
        "remote_ip": both(ea.out_rip[po], c["in_rip"][i], np.uint32),
        "remote_port": both(ea.port[po], np.zeros(n - n_o, np.uint16), np.uint16),
        "connects": both(c["connects"][o], zeros_i, np.uint32),
        "accepts": both(zeros_o, c["accepts"][i], np.uint32),
        "closes": both(c["closes"][o], c["closes"][i], np.uint32),
        "failures": both(c["failures"][o], zeros_i, np.uint32),
        "open": both(c["open"][o], c["open"][i], np.uint32),
        "duration_ms_sum": both(c["duration"][o], c["duration"][i], np.uint64),
        "bytes_sent": both(c["sent"][o], c["received"][i], np.uint64),
        "bytes_received": both(c["received"][o], c["sent"][i], np.uint64),
    }
    cols = {name: pa.array(values) for name, values in numeric.items()}
    cols.update({
        "v": pa.array(np.full(n, VERSION, dtype=np.uint8)),
        "ts": pa.array(stamps),
        "interval_s": pa.array(np.full(n, fleet.config.interval, dtype=np.uint32)),
        **_instance_columns(ea, slot),
        "host_ip": pa.array(ep.host_ip[slot]),
        "netns": pa.array(ep.netns[slot]),
        "direction": pa.DictionaryArray.from_arrays(pa.array(direction), pa.array(["outbound", "inbound"])),
        "local_ip": pa.array(ep.ip[slot]),
    })
    # The simulated fleet has no NAT: those optional fields keep their defaults.
    cols.update({f.name: pa.repeat(pa.scalar(list(f.default) if f.kind == "uints" else f.default,
                                             _OPTIONAL_TYPES[f.kind]), n)
                 for f in CONNECTION_FIELDS if f.optional})
    cols.update(_health_columns(c["accepts"][o], c["slow"][o], c["hs_us"][o], n))
    return pa.table({f.name: cols[f.name] for f in CONNECTION_FIELDS})


def _hs_bucket(us: np.ndarray) -> np.ndarray:
    """tracer.records.handshake_bucket over an array."""
    us = np.maximum(us.astype(np.int64), 1)
    n = np.floor(np.log2(us)).astype(np.int64)
    b = 2 * (n - HANDSHAKE_MIN_LOG2) + ((us >> np.maximum(n - 1, 0)) & 1) + 1
    return np.where(us < (1 << HANDSHAKE_MIN_LOG2), 0, np.minimum(b, HANDSHAKE_BUCKETS - 1))


def _health_columns(handshakes: np.ndarray, slow: np.ndarray, base_us: np.ndarray, n: int) -> dict[str, pa.Array]:
    """The clients' handshakes (the first ``len(handshakes)`` rows, outbound) and the
    SYNs they retransmitted; the servers' rows after them report none."""
    n_o = len(handshakes)
    fast = handshakes - slow
    slow_us = base_us + 1_000_000
    timed = np.flatnonzero(handshakes > 0)
    values = np.zeros(len(timed) * HANDSHAKE_BUCKETS, dtype=np.uint32)
    row = np.arange(len(timed)) * HANDSHAKE_BUCKETS
    np.add.at(values, row + _hs_bucket(base_us[timed]), fast[timed].astype(np.uint32))
    np.add.at(values, row + _hs_bucket(slow_us[timed]), slow[timed].astype(np.uint32))
    lengths = np.zeros(n, dtype=np.int32)
    lengths[timed] = HANDSHAKE_BUCKETS
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    pad = np.zeros(n - n_o, dtype=np.int64)
    return {
        "handshakes": pa.array(np.concatenate([handshakes, pad]).astype(np.uint64)),
        "handshake_us_sum": pa.array(np.concatenate([np.rint(fast * base_us + slow * slow_us), pad]).astype(np.uint64)),
        "handshake_hist": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        "retransmits": pa.array(np.concatenate([slow, pad]).astype(np.uint64)),
    }


def listener_table(fleet: Fleet, ea: _EpochArrays, stamps: list[int]) -> pa.Table:
    """One ListenerRecord per instance and interval."""
    n_slots = fleet.n_instances
    slot = np.tile(np.arange(n_slots), len(stamps))
    ep = ea.epoch
    cols = {
        "v": pa.array(np.full(len(slot), VERSION, dtype=np.uint8)),
        "ts": pa.array(np.repeat(np.asarray(stamps, dtype=np.int64), n_slots)),
        **_instance_columns(ea, slot),
        "ip": pa.array(ep.ip[slot]),
        "port": pa.array(ea.listen_port[slot]),
    }
    return pa.table({f.name: cols[f.name] for f in LISTENER_FIELDS})


@dataclass
class _Batch:
    kind: str          # connections | listeners
    table: pa.Table
    token: str
    first_ts: int
    last_ts: int
    intervals: int     # intervals completed when this batch is stored


def generate(fleet: Fleet, stamps: list[int], chunk_rows: int | None = None):
    """Yield ``_Batch``es covering the interval ends ``stamps`` (sorted).

    A batch never spans two epochs; its dedup token names the config, the
    kind and its first and last interval, so it is the same in every run of
    the same simulation.
    """
    cfg = fleet.config
    chunk_rows = chunk_rows or CHUNK_ROWS
    digest = cfg.digest()
    cache: dict[int, _EpochArrays] = {}
    done = 0
    i = 0
    while i < len(stamps):
        e_idx = next(k for k, ep in enumerate(fleet.epochs) if stamps[i] < ep.end)
        ep = fleet.epochs[e_idx]
        if e_idx not in cache:
            cache.clear()
            cache[e_idx] = _EpochArrays(fleet, e_idx)
        ea = cache[e_idx]
        parts: list[tuple[int, dict]] = []
        rows = 0
        listen: list[int] = []
        while i < len(stamps) and stamps[i] < ep.end and rows < chunk_rows:
            part = _interval(fleet, ea, stamps[i])
            parts.append((stamps[i], part))
            rows += int(ea.out[part["idx"]].sum() + ea.inb[part["idx"]].sum())
            listen.append(stamps[i])
            i += 1
        first, last = parts[0][0], parts[-1][0]
        done += len(parts)
        yield _Batch("listeners", listener_table(fleet, ea, listen),
                     f"sim-{cfg.seed}-{digest}-listeners-{first}-{last}", first, last, done)
        yield _Batch("connections", connection_table(fleet, ea, parts),
                     f"sim-{cfg.seed}-{digest}-connections-{first}-{last}", first, last, done)


# -- writing ------------------------------------------------------------------

@dataclass
class Summary:
    """What a simulation wrote."""

    config: SimConfig
    records: dict[str, int] = field(default_factory=lambda: {"connections": 0, "listeners": 0})
    intervals: int = 0
    seconds: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)
    catalog_version: int | None = None
    catalog_path: str | None = None
    services: int = 0
    instances: int = 0
    edges: int = 0
    alerts: int = 0  # notifications written for the incidents and deploys (``event_alerts``)

    @property
    def total(self) -> int:
        return sum(self.records.values())

    def describe(self) -> str:
        c = self.config
        return (f"{self.records['connections']:,} connection and {self.records['listeners']:,} listener "
                f"records, {self.intervals} intervals of {c.interval} s from {format_ts(c.start)} to "
                f"{format_ts(c.end)}, {self.services} services, {self.instances} instances, seed {c.seed}"
                + (f", {self.alerts} alert notifications for its incidents and deploys" if self.alerts else ""))

    def as_dict(self) -> dict[str, Any]:
        return {"records": dict(self.records), "intervals": self.intervals,
                "seconds": round(self.seconds, 3), "events": self.events, "alerts": self.alerts,
                "catalog_version": self.catalog_version, "catalog_path": self.catalog_path}


class TextProgress:
    """A dependency-free progress bar on stderr: percent, records, rate, ETA.

    On a terminal it redraws one line; otherwise it stays silent until
    ``close``, which prints one final line (unless ``quiet``).
    """

    def __init__(self, stream: Any = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last = 0.0
        self.state = (0, 0, 0)

    def __call__(self, done: int, total: int, records: int) -> None:
        self.state = (done, total, records)
        now = time.monotonic()
        if self.quiet or not self.tty or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        self.stream.write("\r" + self._line() + "\033[K")
        self.stream.flush()

    def _line(self) -> str:
        done, total, records = self.state
        elapsed = max(time.monotonic() - self.started, 1e-9)
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
        return (f"[{bar:<30}] {frac * 100:5.1f}% {done}/{total} intervals  {records:,} records  "
                f"{records / elapsed:,.0f}/s  elapsed {elapsed:.0f}s  ETA {eta:.0f}s")

    def close(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r" + self._line() + "\033[K\n")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


def default_progress(quiet: bool = False) -> TextProgress:
    return TextProgress(quiet=quiet)


def _interval_ends(cfg: SimConfig) -> list[int]:
    return list(range(cfg.start + cfg.interval, cfg.end + 1, cfg.interval))


def _load_catalog(store: Store, fleet: Fleet, catalog_out: str | Path | None) -> tuple[int | None, str | None]:
    text = fleet.catalog_yaml()
    path = None
    if catalog_out:
        Path(catalog_out).write_text(text)
        path = str(catalog_out)
    catalog = parse_catalog(text, path or f"simulated fleet (seed {fleet.config.seed})")
    version = load_into_store(store, catalog, source=path or f"phobos simulate --seed {fleet.config.seed}")
    return version, path


def simulate(store: Store, config: SimConfig, progress: Callable[[int, int, int], None] | None = None,
             *, catalog: bool = True, catalog_out: str | Path | None = None,
             fleet: Fleet | None = None, stop: threading.Event | None = None, alerts: bool = True) -> Summary:
    """Backfill ``config``'s time range into a migrated ``store``.

    Parameters
    ----------
    store : Store
        Where to write (``connections``, ``listeners`` and the catalog tables).
    config : SimConfig
        Sizes, range and seed; checked first (``ValueError`` when inconsistent).
    progress : callable, optional
        Called as ``progress(done_intervals, total_intervals, records)``; its
        ``close()`` (if any) is called at the end.
    catalog : bool
        Also load the fleet's catalog into the store (a new version only when
        it differs from the current one).
    catalog_out : path, optional
        Also write the catalog YAML there.
    stop : threading.Event, optional
        Set it to stop after the batch being written (data so far is kept).
    alerts : bool
        Also write the incidents and deploys as Alertmanager notifications
        (``event_alerts``): incidents show red and both are marked on the
        time line.

    Returns
    -------
    Summary
        Records written per table, the events of the time line, time taken.
    """
    started = time.monotonic()
    fleet = fleet or build_fleet(config)
    cfg = fleet.config
    summary = Summary(config=cfg, events=[_public(e) for e in fleet.events],
                      services=len(fleet.svc_name), instances=fleet.n_instances, edges=len(fleet.edges))
    if catalog or catalog_out:
        version, path = _load_catalog(store, fleet, catalog_out) if catalog else (None, None)
        if not catalog and catalog_out:
            Path(catalog_out).write_text(fleet.catalog_yaml())
            path = str(catalog_out)
        summary.catalog_version, summary.catalog_path = version, path
    stamps = _interval_ends(cfg)
    total = len(stamps)
    # Generation (numpy, releases the GIL for most work) overlaps the inserts.
    batches: queue.Queue = queue.Queue(maxsize=3)
    failed: list[BaseException] = []
    halt = threading.Event()  # set when the consumer is done, for whatever reason

    def produce() -> None:
        try:
            for batch in generate(fleet, stamps):
                if halt.is_set() or (stop is not None and stop.is_set()):
                    break
                batches.put(batch)
        except BaseException as err:  # handed to the consumer
            failed.append(err)
        finally:
            batches.put(None)

    worker = threading.Thread(target=produce, name="phobos-simulate", daemon=True)
    worker.start()
    try:
        while True:
            batch = batches.get()
            if batch is None:
                break
            store.insert_arrow(batch.kind, batch.table, dedup_token=batch.token)
            summary.records[batch.kind] += batch.table.num_rows
            if batch.kind == "connections":
                summary.intervals = batch.intervals
                if progress:
                    progress(batch.intervals, total, summary.total)
            if stop is not None and stop.is_set():
                break
    finally:
        halt.set()
        while worker.is_alive():
            try:
                batches.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()
        if progress and hasattr(progress, "close"):
            progress.close()
    if failed:
        raise failed[0]
    if alerts:
        # Only the events of the range written: a stopped run has not reached the others.
        reached = stamps[summary.intervals - 1] if summary.intervals else cfg.start
        summary.alerts = insert_alerts(store, event_alerts([e for e in fleet.events if e["ts"] <= reached]))
    summary.seconds = time.monotonic() - started
    return summary


#: ``alertname`` of the notifications that stand for deploys on the time line.
DEPLOY_ALERTNAME = "Deploy"


def event_alerts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``alerts`` for the fleet's incidents and deploys, as Alertmanager would have sent them.

    An incident fires at its start and is resolved at its end (two
    notifications, as Alertmanager sends), so the map shows it red and the
    time line marks it.  A deploy is one resolved notification named
    ``Deploy`` (severity ``info``) that ends where it starts: the time line
    marks it, nothing reads it as firing.  Fingerprints are derived from
    the event, so a second run over the same range stores nothing new.
    """
    rows = []

    def row(kind: str, ev: dict[str, Any], received: int, status: str, ends: int, name: str, severity: str,
            summary: str) -> dict[str, Any]:
        labels = {"alertname": name, "service": ev["service"], "severity": severity, "source": "phobos-simulate"}
        return {"received_at": received, "fingerprint": f"sim-{kind}-{ev['service']}-{ev['ts']}",
                "status": status, "alertname": name, "service": ev["service"], "severity": severity,
                "starts_at": ev["ts"], "ends_at": ends, "summary": summary, "labels": labels,
                "annotations": {"summary": summary}}

    edges = {}
    for ev in events:
        if ev["kind"] in ("edge_added", "edge_removed"):
            verb = "adds" if ev["kind"] == "edge_added" else "removes"
            edges.setdefault((ev["by_deploy_of"], ev["ts"]), []).append(f"{verb} {ev['client']} -> {ev['server']}")
    for ev in events:
        if ev["kind"] == "incident":
            text = f"{ev['service']} refuses connections: its clients' connects fail"
            rows.append(row("incident", ev, ev["ts"], "firing", 0, "ServiceDown", "critical", text))
            rows.append(row("incident", ev, ev["end"], "resolved", ev["end"], "ServiceDown", "critical", text))
        elif ev["kind"] == "deploy":
            text = "; ".join([f"{ev['service']} deployed: {len(ev['moved'])} instances moved",
                              *edges.get((ev["service"], ev["ts"]), [])])
            rows.append(row("deploy", ev, ev["ts"], "resolved", ev["ts"], DEPLOY_ALERTNAME, "info", text))
    return rows


def write_interval(store: Store, fleet: Fleet, ts: int) -> int:
    """Write one interval (live mode); returns the records written."""
    written = 0
    for batch in generate(fleet, [ts]):
        written += store.insert_arrow(batch.kind, batch.table, dedup_token=batch.token)
    return written


def write_live(store: Store, fleet: Fleet, last: int, stop: threading.Event,
               report: Callable[[int, int], None] | None = None) -> int:
    """Write each interval after ``last`` when its end passes on the wall clock, until ``stop``.

    ``report(ts, records)`` is called after each interval; returns the
    intervals written.  An interval that ended more than two intervals ago
    (the backfill ended in the past, the machine was suspended: the wait
    runs on the monotonic clock, which stops while suspended) is not written
    late - the fleet goes on from the current interval, so live mode never
    turns into a backfill.
    """
    interval = fleet.config.interval
    ts = last + interval
    intervals = 0
    while not stop.is_set():
        wait = ts - time.time()
        if wait > 0 and stop.wait(wait):
            break
        now = time.time()
        if ts < now - 2 * interval:
            ts = int(now) // interval * interval
        written = write_interval(store, fleet, ts)
        intervals += 1
        if report is not None:
            report(ts, written)
        ts += interval
    return intervals


def _public(event: dict[str, Any]) -> dict[str, Any]:
    """An event with readable times beside the epoch seconds."""
    out = dict(event)
    for key in ("ts", "end", "old_last_ts"):
        if key in out:
            out[key.replace("ts", "time") if key != "end" else "end_time"] = format_ts(out[key])
    return out


# -- command line ---------------------------------------------------------------

def parse_time(text: str, now: float | None = None) -> int:
    """``now``, ``-90m``/``-24h``/``-7d`` (relative to now), epoch seconds or an ISO 8601 time -> epoch seconds."""
    value = timestamps.parse_time(text, now)
    if value is None:
        raise ValueError(f"{text!r} is not a time: use now, -90m, -24h, -7d or an ISO time "
                         "such as 2026-01-01T00:00:00Z")
    return int(value)


def _env(name: str) -> Any:
    return SETTINGS.default(name, "phobos simulate")


def accept_relative_times(parser: argparse.ArgumentParser) -> None:
    """Let ``parser`` read ``-24h`` as a value (``--from -24h``).

    argparse takes anything that starts with "-" and is not a negative
    number for an option, so widen its notion of a number to relative times
    (no flag of ours looks like one).
    """
    parser._negative_number_matcher = re.compile(r"^-\d+(\.\d+)?[smhdw]?$")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``phobos simulate`` flags (each also read from ``PHOBOS_SIM_<FLAG>``)."""
    parser.description = ("Write the records of a simulated multi-area fleet (backfill and/or live) "
                          "and its catalog into a store.")
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    accept_relative_times(parser)
    parser.add_argument("--store", default=_env("STORE") or DEFAULT_STORE_URL,
                        help="store URL (env PHOBOS_STORE; default %(default)s)")
    parser.add_argument("--areas", type=int, default=_env("SIM_AREAS"),
                        help="business areas (env PHOBOS_SIM_AREAS; default %(default)s)")
    parser.add_argument("--services", type=int, default=_env("SIM_SERVICES"),
                        help="services, at least --areas (env PHOBOS_SIM_SERVICES; default %(default)s)")
    parser.add_argument("--instances", type=int, default=_env("SIM_INSTANCES"),
                        help="instances, at least --services (env PHOBOS_SIM_INSTANCES; default %(default)s)")
    parser.add_argument("--dcs", type=int, default=_env("SIM_DCS"),
                        help="datacenters (env PHOBOS_SIM_DCS; default %(default)s)")
    parser.add_argument("--from", dest="start", default=_env("SIM_FROM"),
                        help="start: -90m, -24h, -7d or an ISO time (env PHOBOS_SIM_FROM; default %(default)s)")
    parser.add_argument("--to", dest="end", default=_env("SIM_TO"),
                        help="end: now, relative or ISO (env PHOBOS_SIM_TO; default %(default)s)")
    parser.add_argument("--interval", type=int, default=_env("SIM_INTERVAL"),
                        help="seconds per record interval (env PHOBOS_SIM_INTERVAL; default %(default)s)")
    parser.add_argument("--seed", type=int, default=_env("SIM_SEED"),
                        help="random seed; same seed and range, same records (env PHOBOS_SIM_SEED; "
                        "default %(default)s)")
    parser.add_argument("--live", action="store_true", default=_env("SIM_LIVE"),
                        help="after the backfill, keep writing each interval in real time until "
                        "Ctrl-C (env PHOBOS_SIM_LIVE=1)")
    parser.add_argument("--catalog-out", default=_env("SIM_CATALOG_OUT"), metavar="FILE",
                        help="also write the fleet's catalog YAML to FILE (env PHOBOS_SIM_CATALOG_OUT)")
    parser.add_argument("--no-catalog", action="store_true",
                        help="do not load the fleet's catalog into the store")
    parser.add_argument("--events-out", metavar="FILE",
                        help="write the events (deploys, IP reuse, incidents ...) as JSON to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phobos simulate")
    configure_parser(parser)
    return parser


def config_from_args(args: argparse.Namespace, now: float | None = None) -> SimConfig:
    """The checked ``SimConfig`` of parsed arguments (``ValueError`` if inconsistent)."""
    now = time.time() if now is None else now
    cfg = SimConfig(areas=args.areas, services=args.services, instances=args.instances, dcs=args.dcs,
                    start=parse_time(args.start, now), end=parse_time(args.end, now),
                    interval=args.interval, seed=args.seed)
    return cfg.check()


def run(args: argparse.Namespace) -> int:
    """``phobos simulate``: returns the exit status."""
    from api.storage import StoreError, open_store

    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"phobos simulate: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open_store(args.store, role="phobos simulate") as store:
            store.migrate()
            fleet = build_fleet(cfg)
            progress = None if args.quiet else default_progress()
            summary = simulate(store, cfg, progress, catalog=not args.no_catalog,
                               catalog_out=args.catalog_out, fleet=fleet, stop=stop)
            out = sys.stderr if args.quiet else sys.stdout
            if not args.quiet:
                print(f"simulated {summary.describe()} in {summary.seconds:.1f} s", file=out)
                if summary.catalog_version is not None:
                    print(f"catalog version {summary.catalog_version} loaded", file=out)
                print("events:", file=out)
                for event in summary.events:
                    print("  " + json.dumps(_brief(event)), file=out)
            if args.events_out:
                Path(args.events_out).write_text(json.dumps(summary.events, indent=1) + "\n")
            if args.live and not stop.is_set():
                _live(store, fleet, cfg.end, stop, quiet=args.quiet)
    except StoreError as err:
        print(f"phobos simulate: {err}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _brief(event: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in event.items() if k != "moved"}
    if "moved" in event:
        out["moved"] = len(event["moved"])
    return out


def _live(store: Store, fleet: Fleet, last: int, stop: threading.Event, quiet: bool) -> None:
    """``--live``: ``write_live`` with a line per interval on stderr."""
    if not quiet:
        print(f"live: writing every {fleet.config.interval} s after {format_ts(last)}; Ctrl-C stops",
              file=sys.stderr)

    def report(ts: int, written: int) -> None:
        if not quiet:
            print(f"live: {format_ts(ts)} {written:,} records", file=sys.stderr)

    write_live(store, fleet, last, stop, report)
    if not quiet:
        print("live: stopped; everything written is kept", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
